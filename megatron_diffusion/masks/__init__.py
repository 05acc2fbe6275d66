"""Attention-mask definitions shared by every attention backend (docs/method.md 3-4).

``dense`` holds the one predicate and its dense evaluation (SDPA / megatron local attention on
CPU); ``flex`` builds FlexAttention ``BlockMask``s from the same predicate; the ``show-mask``
command (``cli/show_mask.py``) draws them.
"""

from megatron_diffusion.masks.config import CLEAN_STREAMS, MODES, AttentionConfig
from megatron_diffusion.masks.dense import (
    MaskTokens,
    attention_allowed,
    make_mask_mod,
    mask_tokens,
    position_ids_for_mode,
    to_megatron_mask,
)

__all__ = [
    "AttentionConfig",
    "CLEAN_STREAMS",
    "MODES",
    "MaskTokens",
    "attention_allowed",
    "make_mask_mod",
    "mask_tokens",
    "position_ids_for_mode",
    "to_megatron_mask",
]
