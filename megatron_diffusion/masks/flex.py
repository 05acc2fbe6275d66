"""FlexAttention ``BlockMask``s built from the same predicate as the dense masks (``dense.py``).

FlexAttention (``torch.nn.attention.flex_attention``) cuts the ``S x S`` score matrix into tiles
(``tile_size``, 128 by default) and classifies each as empty (skipped), full (no mask evaluated)
or partial (``mask_mod`` evaluated per element). Block diffusion's noisy half is mostly empty
tiles, so on GPU this is where the speed of the ``x_t (+) x0`` layout comes from (bd3lms uses it;
docs/method.md 3).

The ``mask_mod`` is ``dense.make_mask_mod`` itself, so a ``BlockMask`` and the dense bool mask
cannot disagree. With ``shared`` visibility the mask depends only on the shape and the config,
never on the documents (Stable-DiffCoder's reason for shared visibility: one static mask per
shape), so it is built once and cached, with batch 1 broadcast over the batch. With
``isolated`` visibility it depends on each batch's documents and is built per call.

CPU (torch 2.13): Flex runs forward only (no backward), eager or compiled; train with the dense
mask and SDPA on CPU. ``flex_attention_forward`` compiles on CUDA and stays eager elsewhere.
"""

import functools
import warnings

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.masks.dense import make_mask_mod, mask_tokens

DEFAULT_TILE_SIZE = 128


def create_flex_block_mask(
    cfg: AttentionConfig,
    document_ids_BL: torch.Tensor,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    compile: bool = False,
) -> BlockMask:
    """The ``BlockMask`` of ``cfg`` for a batch (``S = L`` or ``2L`` as in ``dense``).

    ``compile=True`` builds the mask with torch.compile (``create_block_mask(_compile=True)``):
    much faster for long rows on GPU, a slow first call on CPU. Shared visibility returns a
    cached mask of batch 1 (FlexAttention broadcasts it over the batch).
    """
    L = document_ids_BL.shape[-1]
    if cfg.visibility == "shared":
        return _shared_block_mask(
            cfg.mode, cfg.block_size, cfg.clean_stream, L, tile_size, compile, document_ids_BL.device
        )
    return _build(cfg, document_ids_BL, tile_size, compile)


def _build(cfg, document_ids_BL, tile_size, compile) -> BlockMask:
    tokens = mask_tokens(cfg, document_ids_BL)
    B, S = tokens.document_BS.shape
    return create_block_mask(
        make_mask_mod(cfg, tokens), B, None, S, S,
        device=document_ids_BL.device, BLOCK_SIZE=tile_size, _compile=compile,
    )


@functools.lru_cache(maxsize=32)
def _shared_block_mask(mode, block_size, clean_stream, seq_len, tile_size, compile, device) -> BlockMask:
    cfg = AttentionConfig(mode, block_size, "shared", clean_stream)
    # Shared visibility ignores documents, so one document of the full row stands for all.
    one_document_BL = torch.zeros(1, seq_len, dtype=torch.long, device=device)
    return _build(cfg, one_document_BL, tile_size, compile)


def densify(block_mask: BlockMask) -> torch.Tensor:
    """Element-level bool mask ``[B, S, S]`` that ``block_mask`` really applies: empty tiles
    False, full tiles True (their ``mask_mod`` is never evaluated), partial tiles ``mask_mod``.

    For checking a ``BlockMask`` against the dense mask, sparse structure included. Evaluates
    ``mask_mod`` on broadcast index grids, as ``dense.attention_allowed`` does. Head 0 only
    (our masks do not depend on the head).
    """
    q_len, kv_len = block_mask.seq_lengths
    tile_q, tile_kv = block_mask.BLOCK_SIZE
    B = block_mask.kv_num_blocks.shape[0]
    num_q_tiles = block_mask.kv_num_blocks.shape[-1]
    num_kv_tiles = -(-kv_len // tile_kv)
    kind_BQK = torch.zeros(B, num_q_tiles, num_kv_tiles, dtype=torch.long)  # 0 empty, 1 partial, 2 full
    for kind, num, idx in (
        (1, block_mask.kv_num_blocks, block_mask.kv_indices),
        (2, block_mask.full_kv_num_blocks, block_mask.full_kv_indices),
    ):
        if num is None:
            continue
        num_BQ, idx_BQK = num[:, 0].cpu().long(), idx[:, 0].cpu().long()
        listed = torch.arange(idx_BQK.shape[-1]) < num_BQ[..., None]
        for b, qt, slot in listed.nonzero().tolist():
            kind_BQK[b, qt, idx_BQK[b, qt, slot]] = kind
    kind_BSS = kind_BQK.repeat_interleave(tile_q, 1).repeat_interleave(tile_kv, 2)[:, :q_len, :kv_len]
    b_idx = torch.arange(B).view(B, 1, 1)
    q_idx = torch.arange(q_len).view(1, q_len, 1)
    kv_idx = torch.arange(kv_len).view(1, 1, kv_len)
    mod_BSS = block_mask.mask_mod(b_idx, torch.zeros((), dtype=torch.long), q_idx, kv_idx)
    return (kind_BSS == 2) | ((kind_BSS == 1) & mod_BSS.cpu())


@functools.cache
def _compiled_flex_attention():
    return torch.compile(flex_attention)


def flex_attention_forward(
    q_BHSD: torch.Tensor,
    k_BHSD: torch.Tensor,
    v_BHSD: torch.Tensor,
    block_mask: BlockMask,
    *,
    scale: float | None = None,
    enable_gqa: bool = False,
    compiled: bool | None = None,
) -> torch.Tensor:
    """Attention output ``[B, H, S, D]`` under ``block_mask``.

    ``compiled`` defaults to True on CUDA (the fused kernel that skips empty tiles) and False
    elsewhere: eager Flex materialises the full scores, like SDPA, but needs no compile step
    (tens of seconds on a small CPU).
    """
    if compiled is None:
        compiled = q_BHSD.is_cuda
    if compiled:
        return _compiled_flex_attention()(
            q_BHSD, k_BHSD, v_BHSD, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa
        )
    with warnings.catch_warnings():
        # eager is chosen on purpose here; torch warns that it is unfused
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q_BHSD, k_BHSD, v_BHSD, block_mask=block_mask, scale=scale,
                              enable_gqa=enable_gqa)
