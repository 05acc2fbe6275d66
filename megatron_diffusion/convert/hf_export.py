"""Load an HF directory straight into a model for sampling/evaluation (no checkpoint on disk).

The shipped format of a trained model is the HF export (``mcore-to-hf``). ``load_hf_export``
builds the same ``LoadedModel`` that ``model.loading.load_model`` returns for a checkpoint: the
run config comes from ``megatron_diffusion.json`` (so attention mode, block size, mask id and
logit shift are the trained ones), and the weights stream from the safetensors files into this
rank's tensor-parallel shard through the same tensor map as ``hf-to-mcore``. The result is bit-
identical to loading the checkpoint that was exported (tested).

A supported HF directory without that file (an AR model whose tokenizer has ``[MASK]``) loads
too, described as what it is: causal attention, ``logit_shift=True``.
"""

from pathlib import Path

import torch

from megatron_diffusion.convert.hf_to_mcore import SIDECAR, HFTensorView, plan_import


def is_hf_export(path) -> bool:
    """Is ``path`` an HF model directory (config.json + safetensors) rather than a checkpoint?"""
    p = Path(path)
    return (p / "config.json").is_file() and (
        (p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file())


def has_diffusion_metadata(path) -> bool:
    return (Path(path) / SIDECAR).is_file()


def load_hf_export(path, *, tensor_model_parallel_size: int = 1, params_dtype: str | None = None,
                   attention_backend: str | None = None):
    """Initialise model parallelism (this process, or torchrun's ranks) and load the weights of
    an HF directory; returns ``model.loading.LoadedModel`` (``meta``: the export's checkpoint
    meta, or a minimal one for a plain HF model)."""
    from megatron_diffusion.model import weights
    from megatron_diffusion.model.gpt import build_model, transformer_config
    from megatron_diffusion.model.loading import LoadedModel
    from megatron_diffusion.parallel.process_groups import initialize_model_parallel

    path = Path(path)
    plan = plan_import(path, params_dtype=params_dtype)
    cfg = plan.config
    if attention_backend is not None:
        cfg.model.attention_backend = attention_backend
    tp = tensor_model_parallel_size
    cfg.model.validate(tp)
    initialize_model_parallel(tp, 1, seed=cfg.training.seed)
    tcfg = transformer_config(cfg.model, tensor_model_parallel_size=tp)
    tcfg.perform_initialization = False
    model = build_model(cfg.model, tcfg)
    weights.load_full([model], HFTensorView(plan, model.vocab_size), strict=True)
    if torch.cuda.is_available():
        model = model.cuda()
    model.eval()
    if plan.sidecar is not None:
        meta = dict(plan.sidecar["meta"])
    else:
        meta = {"format": "megatron-diffusion-checkpoint", "format_version": 1, "step": 0,
                "consumed_samples": 0}
    meta.update(config=cfg.to_dict(), tokenizer_hash=plan.tokenizer.loaded.hash)
    meta.setdefault("generation", plan.generation)  # stop tokens of a plain HF directory too
    return LoadedModel(model=model, config=cfg, meta=meta,
                       tokenizer_path=str(path / "tokenizer.json"), path=path)
