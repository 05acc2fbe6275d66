"""Load an HF directory straight into a model for sampling/evaluation (no checkpoint on disk).

The shipped format of a trained model is the HF export (``mcore-to-hf``). ``load_hf_export``
builds the model as a checkpoint load does (``model.inference.build_inference_model``) and
returns the same ``LoadedModel``: the run config comes from ``megatron_diffusion.json`` (so
attention mode, block size, mask id and logit shift are the trained ones), and the weights
stream from the safetensors files into this rank's tensor-parallel shard through the same tensor
map as ``hf-to-mcore``. The result is bit-identical to loading the checkpoint that was exported
(tested). ``loading.trained.load_model`` picks this loader for an HF directory.

A supported HF directory without that file (an AR model whose tokenizer has ``[MASK]``) loads
too, described as what it is: causal attention, ``logit_shift=True``.
"""

from pathlib import Path

import torch

from megatron_diffusion.convert.hf_to_mcore import HFTensorView, plan_import
from megatron_diffusion.model import weights
from megatron_diffusion.model.inference import LoadedModel, build_inference_model
from megatron_diffusion.training.checkpoint import checkpoint_meta


def is_hf_export(path) -> bool:
    """Is ``path`` an HF model directory (config.json + safetensors) rather than a checkpoint?"""
    p = Path(path)
    return (p / "config.json").is_file() and (
        (p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file())


def load_hf_export(path, *, tensor_model_parallel_size: int = 1, params_dtype: str | None = None,
                   attention_backend: str | None = None) -> LoadedModel:
    """Initialise model parallelism (this process, or torchrun's ranks) and load the weights of
    an HF directory (``meta``: the export's checkpoint meta, or a step-0 one for a plain HF
    model)."""
    path = Path(path)
    plan = plan_import(path, params_dtype=params_dtype)
    cfg = plan.config
    model = build_inference_model(cfg.model, tensor_model_parallel_size=tensor_model_parallel_size,
                                  seed=cfg.training.seed, attention_backend=attention_backend,
                                  initialize=False)  # every weight comes from the files
    weights.load_full([model], HFTensorView(plan, model.vocab_size), strict=True)
    if torch.cuda.is_available():
        model = model.cuda()
    model.eval()
    tokenizer_hash = plan.tokenizer.loaded.hash
    if plan.sidecar is not None:  # read_sidecar checked its format
        meta = dict(plan.sidecar["meta"], config=cfg.to_dict(), tokenizer_hash=tokenizer_hash)
        meta.setdefault("generation", plan.generation)  # stop tokens of a plain HF directory too
    else:
        meta = checkpoint_meta(cfg, tokenizer_hash=tokenizer_hash, step=0,
                               generation=plan.generation)
    return LoadedModel(model=model, config=cfg, meta=meta,
                       tokenizer_path=str(path / "tokenizer.json"), path=path)
