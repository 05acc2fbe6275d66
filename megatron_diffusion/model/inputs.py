"""From a ``DiffusionBatch`` to what ``DiffusionGPTModel.forward`` takes.

``tokens [b, S]``, ``position_ids [b, S]`` and the attention mask in megatron's convention
(``[b, 1, S, S]``, True = masked). ``forward_kwargs`` adapts the mask to the attention backend:
a dense boolean mask (``sdpa``), a FlexAttention ``BlockMask`` built from the same predicate
(``flex``), or an additive ``-inf`` bias for Transformer Engine's fused attention (``te``, mask
type ``no_mask``, passed as ``attention_bias``: cuDNN fused attention takes it, flash-attn does
not). With ``shared`` visibility the mask depends only on the shape
and the attention settings (Stable-DiffCoder's reason for it: one static mask, one compiled
kernel), so it is built once and reused; ``isolated`` packing builds it per batch.
"""

import torch

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.masks.dense import attention_allowed, position_ids_for_mode, to_megatron_mask

_STATIC_MASKS: dict = {}


def attention_mask(cfg: AttentionConfig, document_ids_BL: torch.Tensor) -> torch.Tensor:
    if cfg.visibility == "shared":
        key = (cfg.mode, cfg.block_size, cfg.clean_stream, document_ids_BL.shape[1],
               document_ids_BL.device)
        if key not in _STATIC_MASKS:
            one_row = torch.zeros(1, document_ids_BL.shape[1], dtype=torch.long,
                                  device=document_ids_BL.device)
            _STATIC_MASKS[key] = to_megatron_mask(attention_allowed(cfg, one_row))
        return _STATIC_MASKS[key].expand(document_ids_BL.shape[0], -1, -1, -1)
    return to_megatron_mask(attention_allowed(cfg, document_ids_BL))


def model_inputs(batch: DiffusionBatch, cfg: AttentionConfig):
    """``(tokens_BS, position_ids_BS, attention_mask_B1SS)`` for one micro-batch."""
    position_ids_BS = position_ids_for_mode(batch.document_ids_BL, cfg)
    if batch.tokens_BS.shape != position_ids_BS.shape:
        raise ValueError(f"batch tokens {tuple(batch.tokens_BS.shape)} do not fit attention mode "
                         f"{cfg.mode!r} (expected {tuple(position_ids_BS.shape)})")
    return batch.tokens_BS, position_ids_BS, attention_mask(cfg, batch.document_ids_BL)


def forward_kwargs(batch: DiffusionBatch, cfg: AttentionConfig, backend: str = "sdpa") -> dict:
    """Keyword arguments of ``DiffusionGPTModel.forward`` for ``backend``."""
    tokens, position_ids, mask = model_inputs(batch, cfg)
    kwargs = {"input_ids": tokens, "position_ids": position_ids, "attention_mask": mask}
    if backend == "flex":
        from megatron_diffusion.masks.flex import create_flex_block_mask

        kwargs["attention_mask"] = create_flex_block_mask(
            cfg, batch.document_ids_BL, compile=torch.cuda.is_available())
    elif backend == "te":
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        kwargs["attention_mask"] = None
        kwargs["extra_block_kwargs"] = {"attention_bias": bias.masked_fill(mask, float("-inf"))}
    return kwargs
