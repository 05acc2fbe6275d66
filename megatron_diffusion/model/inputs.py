"""From a ``DiffusionBatch`` to what ``DiffusionGPTModel.forward`` takes.

``tokens [b, S]``, ``position_ids [b, S]`` and the attention mask in megatron's convention
(``[b, 1, S, S]``, True = masked). With ``shared`` visibility the mask depends only on the shape
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
