"""Load a trained checkpoint as a model for inference (sampling, evaluation, conversion).

A checkpoint carries everything needed to rebuild its model (``meta.json``: the run config,
step, tokenizer hash; ``tokenizer.json``), and its weights are sharded with
``dist_checkpointing``, so it loads under any tensor-parallel size, not only the one it was
trained with. Pipeline parallelism is not used for inference (``pipeline_model_parallel_size``
is 1): models too large for one GPU use TP.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_diffusion.config import RunConfig, config_from_dict
from megatron_diffusion.errors import UsageError


@dataclass
class LoadedModel:
    model: torch.nn.Module
    """``DiffusionGPTModel`` in eval mode (this rank's TP shard)."""
    config: RunConfig
    """The run config the checkpoint was trained with."""
    meta: dict
    """``meta.json`` of the checkpoint."""
    tokenizer_path: str | None
    """``tokenizer.json`` inside the checkpoint, if present."""
    path: Path


def resolve_checkpoint(path, option: str = "--checkpoint") -> Path:
    """A checkpoint directory, or a run directory / checkpoints dir (then its latest);
    ``option`` names the flag in errors."""
    from megatron_diffusion.training.checkpoint import latest_checkpoint

    p = Path(path)
    if not p.exists():
        raise UsageError(f"{option}: {p} does not exist")
    if (p / "meta.json").is_file():
        return p
    for run_dir in (p, p.parent):
        found = latest_checkpoint(run_dir) if (run_dir / "checkpoints").is_dir() else None
        if found is not None:
            return found
    raise UsageError(f"{option}: {p} is not a megatron-diffusion checkpoint (no meta.json) "
                     "nor a run directory with checkpoints")


def load_model(path, *, tensor_model_parallel_size: int = 1, params_dtype: str | None = None,
               attention_backend: str | None = None) -> LoadedModel:
    """Initialise model parallelism (this process, or torchrun's ranks) and load the weights."""
    from megatron_diffusion.model.gpt import build_model, transformer_config
    from megatron_diffusion.parallel.process_groups import initialize_model_parallel
    from megatron_diffusion.training.checkpoint import load_checkpoint, read_meta

    from megatron_diffusion.convert.hf_export import is_hf_export, load_hf_export

    if is_hf_export(path):  # an `mcore-to-hf` export loads directly (config records the mode)
        return load_hf_export(path, tensor_model_parallel_size=tensor_model_parallel_size,
                              params_dtype=params_dtype, attention_backend=attention_backend)
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    if meta.get("format") != "megatron-diffusion-checkpoint":
        raise UsageError(f"--checkpoint: {ckpt} has format {meta.get('format')!r}, expected "
                         "'megatron-diffusion-checkpoint'")
    cfg = config_from_dict(meta["config"])
    if params_dtype is not None:
        cfg.model.params_dtype = params_dtype
    if attention_backend is not None:
        cfg.model.attention_backend = attention_backend
    cfg.model.validate(tensor_model_parallel_size)
    initialize_model_parallel(tensor_model_parallel_size, 1, seed=cfg.training.seed)
    tcfg = transformer_config(cfg.model, tensor_model_parallel_size=tensor_model_parallel_size)
    model = build_model(cfg.model, tcfg)
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
