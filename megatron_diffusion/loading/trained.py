"""Load a trained model for inference: ``load_model`` (the dispatcher) and ``load_sampler``.

``load_model(path)`` accepts what a user passes as ``--checkpoint``:

* an HF export (``config.json`` + safetensors, ``convert mcore-to-hf``): ``convert.hf_export``;
* a checkpoint directory (``meta.json``), or a run / checkpoints directory, whose latest
  checkpoint is used (``training.checkpoint.resolve_checkpoint``).

A checkpoint carries everything needed to rebuild its model (``meta.json``: the run config,
step, tokenizer hash; ``tokenizer.json``), and its weights are sharded with
``dist_checkpointing``, so it loads under any tensor-parallel size, not only the one it was
trained with. ``load_sampler(path, ...)`` is the contract of docs/evaluation.md: the loaded model
and its tokenizer as a ``sampling.api.DiffusionSampler``, its settings validated once, before
any weight is read. A checkpoint's ``tokenizer.json`` must be the tokenizer its ``meta.json``
records (``check_own_tokenizer``): a swapped file would turn the model's ids into other text.
"""

import dataclasses
from pathlib import Path

import torch

from megatron_diffusion.config import config_from_dict
from megatron_diffusion.convert.hf_export import is_hf_export, load_hf_export
from megatron_diffusion.data.tokenizer import load_tokenizer
from megatron_diffusion.errors import UsageError
from megatron_diffusion.model.inference import LoadedModel, build_inference_model
from megatron_diffusion.sampling.api import KNOBS, DiffusionSampler
from megatron_diffusion.sampling.config import SamplerConfig
from megatron_diffusion.training.checkpoint import (check_own_tokenizer, load_checkpoint, read_meta,
                                                    resolve_checkpoint)


def load_model(path, *, tensor_model_parallel_size: int = 1, params_dtype: str | None = None,
               attention_backend: str | None = None) -> LoadedModel:
    """Initialise model parallelism (this process, or torchrun's ranks) and load the weights of
    an HF export, a checkpoint, or a run directory's latest checkpoint."""
    options = dict(tensor_model_parallel_size=tensor_model_parallel_size,
                   params_dtype=params_dtype, attention_backend=attention_backend)
    if is_hf_export(path):  # an `mcore-to-hf` export loads directly (config records the mode)
        return load_hf_export(path, **options)
    return load_native(resolve_checkpoint(path), **options)


def load_native(ckpt: Path, *, tensor_model_parallel_size: int = 1,
                params_dtype: str | None = None,
                attention_backend: str | None = None) -> LoadedModel:
    """Load checkpoint directory ``ckpt`` (its meta.json format checked) into its own model."""
    meta = read_meta(ckpt)
    check_own_tokenizer(ckpt, meta)
    cfg = config_from_dict(meta["config"])
    model = build_inference_model(cfg.model, tensor_model_parallel_size=tensor_model_parallel_size,
                                  seed=cfg.training.seed, params_dtype=params_dtype,
                                  attention_backend=attention_backend)
    if torch.cuda.is_available():
        model = model.cuda()
    try:
        load_checkpoint(ckpt, [model])
    except Exception as e:  # shape mismatch etc. from dist_checkpointing
        raise UsageError(f"--checkpoint: {ckpt} does not load into its own config's model: "
                         f"{str(e).splitlines()[0]}") from None
    model.eval()
    tok = ckpt / "tokenizer.json"
    return LoadedModel(model=model, config=cfg, meta=meta,
                       tokenizer_path=str(tok) if tok.is_file() else None, path=ckpt)


def load_sampler(checkpoint, config: SamplerConfig | None = None, *,
                 tensor_model_parallel_size: int = 1, params_dtype: str | None = None,
                 **knobs) -> DiffusionSampler:
    """Load ``checkpoint`` (anything ``load_model`` takes) as a ``DiffusionSampler``.

    Decoding settings: ``config`` (default ``SamplerConfig()``) with ``knobs`` (its fields:
    ``max_new_tokens, block_size, strategy, steps_per_block, threshold, temperature, seed,
    self_correct, ...``) applied on top; they are validated here, once, before the model loads.
    Under torchrun with ``tensor_model_parallel_size = N`` every rank calls this and
    ``complete`` with the same prompts; all return the same completions.
    """
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise UsageError(f"load_sampler: unknown setting(s) {', '.join(unknown)}; expected some "
                         f"of {', '.join(KNOBS)}")
    cfg = dataclasses.replace(config or SamplerConfig(), **knobs).validate()
    loaded = load_model(checkpoint, tensor_model_parallel_size=tensor_model_parallel_size,
                        params_dtype=params_dtype)
    if loaded.tokenizer_path is None:
        raise UsageError(f"--checkpoint: {loaded.path} has no tokenizer.json")
    tokenizer = load_tokenizer(loaded.tokenizer_path)
    if tokenizer.mask_id != loaded.config.model.mask_token_id:
        raise UsageError(f"--checkpoint: {loaded.path}: tokenizer [MASK] id {tokenizer.mask_id} "
                         f"differs from model.mask_token_id={loaded.config.model.mask_token_id}")
    return DiffusionSampler(loaded, tokenizer, cfg)
