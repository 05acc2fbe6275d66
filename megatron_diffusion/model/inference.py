"""A model built for inference (sampling, evaluation), and what it was loaded from.

Both loaders, ``loading.trained`` for a megatron-diffusion checkpoint and
``convert.hf_export`` for an HF export, build their model with ``build_inference_model`` and
return a ``LoadedModel``; the sampler receives that. Pipeline parallelism is not used for
inference (``pipeline_model_parallel_size`` is 1): models too large for one GPU use TP, and
every TP rank builds its shard. This module knows only the model config: the run config
(``LoadedModel.config``) is read by the loaders, a later level.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_diffusion.model.config import ModelConfig
from megatron_diffusion.model.gpt import DiffusionGPTModel, build_model, transformer_config
from megatron_diffusion.parallel.process_groups import initialize_model_parallel


@dataclass
class LoadedModel:
    model: torch.nn.Module
    """``DiffusionGPTModel`` in eval mode (this rank's TP shard)."""
    config: object
    """The ``RunConfig`` the model was trained with (attention mode, block size, mask id)."""
    meta: dict
    """``meta.json`` of the checkpoint (an HF export: the meta of the checkpoint it came from)."""
    tokenizer_path: str | None
    """``tokenizer.json`` next to the weights, if present."""
    path: Path


def build_inference_model(model_cfg: ModelConfig, *, tensor_model_parallel_size: int = 1,
                          seed: int, params_dtype: str | None = None,
                          attention_backend: str | None = None,
                          initialize: bool = True) -> DiffusionGPTModel:
    """Initialise model parallelism (this process, or torchrun's ranks: TP only) and build
    this rank's model on the host. ``params_dtype`` / ``attention_backend`` override
    ``model_cfg``'s (in place, so the config reports what runs). ``initialize=False`` leaves
    the weights uninitialised, for a caller that overwrites every one of them."""
    if params_dtype is not None:
        model_cfg.params_dtype = params_dtype
    if attention_backend is not None:
        model_cfg.attention_backend = attention_backend
    model_cfg.validate().check_tensor_parallel(tensor_model_parallel_size)
    initialize_model_parallel(tensor_model_parallel_size, 1, seed=seed)
    tcfg = transformer_config(model_cfg, tensor_model_parallel_size=tensor_model_parallel_size)
    if not initialize:
        tcfg.perform_initialization = False
    return build_model(model_cfg, tcfg)
