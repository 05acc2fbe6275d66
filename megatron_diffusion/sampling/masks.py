"""Attention masks of one sampler forward: clean context + each row's current noisy block.

A batch is a token buffer ``[b, C]``: prompts left-padded to ``P`` columns, then the generation
in blocks of ``B`` from column ``P``; each row is at its own block. One forward feeds row ``r``
the columns ``[in_start_r, in_end_r)`` (earlier ones are in the KV cache), left-aligned in a
``[b, W]`` input. Query ``i`` may attend key ``j`` when ``j`` is a real column of the row (not
padding, not scratch; padding queries attend only themselves) and the model's training mask
predicate (``masks.dense.make_mask_mod``) allows it, evaluated with block ids of the inference
size and a clean flag for the columns before the row's block (docs/method.md 3). A clean column
never attends a later one, so the cache is exact (docs/method.md 8); a ``bidirectional`` model
with the cache uses the same predicate over two blocks, clean prefix and current block (Seed
Diffusion 3.4's prefix rule). The revisit window's ``n_r`` extra queries are noisy copies of the
end of the previous block, grouped with the current block (docs/sampling.md, self-correction).

Shape suffixes: ``B`` batch rows, ``C`` buffer columns, ``W`` chunk width, ``K`` key columns
(slots of the buffer the forward attends).
"""

from dataclasses import dataclass

import torch

from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.masks.dense import MaskTokens, make_mask_mod


@dataclass(frozen=True)
class ChunkAttention:
    """Which training mask predicate a sampler forward evaluates (see the module docstring)."""

    attention: AttentionConfig
    """The predicate's settings: the trained model's mode and clean stream."""
    prefix_blocks: bool = False
    """Prefix decoding of a bidirectional model with a cache: the ``block`` predicate over two
    blocks, clean prefix and current block."""

    @staticmethod
    def for_model(mode: str, clean_stream: str, prefix_cache: bool = False) -> "ChunkAttention":
        """``prefix_cache``: a bidirectional model decoded over prompt + finished blocks +
        current block with a cache (Seed Diffusion 3.4): clean columns attend only clean ones,
        so their keys/values can be cached when fed (approximate: training let them see the
        later positions)."""
        if mode == "bidirectional" and prefix_cache:
            return ChunkAttention(AttentionConfig(mode="block", clean_stream="block_causal"),
                                  prefix_blocks=True)
        return ChunkAttention(AttentionConfig(mode=mode, clean_stream=clean_stream))


def clean_block_ids(pad_B: torch.Tensor, prompt_columns: int, total_columns: int,
                    block_size: int) -> torch.Tensor:
    """Block index of every buffer column ``[b, C]`` for the block-causal clean rule.

    Prompt blocks are counted from each row's first real token; generation blocks from column
    ``P`` on (the prompt's last block may be short). Left padding gets -1 (never read).
    """
    col_C = torch.arange(total_columns, device=pad_B.device)
    prompt_len_B1 = (prompt_columns - pad_B)[:, None]
    in_prompt_BC = (col_C - pad_B[:, None]) // block_size
    num_prompt_blocks_B1 = (prompt_len_B1 + block_size - 1) // block_size
    in_gen_BC = num_prompt_blocks_B1 + (col_C - prompt_columns) // block_size
    ids_BC = torch.where(col_C < prompt_columns, in_prompt_BC, in_gen_BC)
    return torch.where(col_C >= pad_B[:, None], ids_BC, torch.full_like(ids_BC, -1))


def _slot_tokens(view: ChunkAttention, blocks_BC, clean_BK, copy_BK, block_start_B,
                 key_len: int) -> MaskTokens:
    """The predicate's per-slot facts: one document, block ids, clean flags."""
    current_B1 = blocks_BC.gather(1, block_start_B[:, None].clamp(max=blocks_BC.shape[1] - 1))
    if view.prefix_blocks:
        block_BK = (~clean_BK).long()
    else:
        block_BK = torch.where(copy_BK, current_B1, blocks_BC[:, :key_len])
    return MaskTokens(document_BS=torch.zeros_like(block_BK), block_BS=block_BK,
                      clean_BS=clean_BK)


def chunk_mask(view: ChunkAttention, pad_B: torch.Tensor, blocks_BC: torch.Tensor, *,
               in_start_B: torch.Tensor, in_end_B: torch.Tensor, block_start_B: torch.Tensor,
               width: int, key_len: int, seq_end: int,
               window_B: torch.Tensor | None = None) -> torch.Tensor:
    """megatron mask ``[b, 1, width, key_len]`` (True = masked).

    Query ``w`` of row ``r`` is slot ``in_start_r + w``; key ``k`` is slot ``k``. Slots below
    ``in_end_r`` are the row's columns (``>= block_start_r``: noisy; ``>= seq_end``: right
    padding); the next ``window_B[r]`` slots are noisy copies of the row's revisit window.
    """
    device = pad_B.device
    q_BW = in_start_B[:, None] + torch.arange(width, device=device)
    k_K = torch.arange(key_len, device=device)
    pad_B1, end_B1 = pad_B[:, None], in_end_B[:, None]
    real_BK = (k_K >= pad_B1) & (k_K < end_B1) & (k_K < seq_end)
    window_B1 = torch.zeros_like(end_B1) if window_B is None else window_B[:, None]
    copy_BK = (k_K >= end_B1) & (k_K < end_B1 + window_B1)
    clean_BK = real_BK & (k_K < block_start_B[:, None])
    tokens = _slot_tokens(view, blocks_BC, clean_BK, copy_BK, block_start_B, key_len)
    rows_B11 = torch.arange(pad_B.shape[0], device=device)[:, None, None]
    q_BW1, k_11K = q_BW.clamp(max=key_len - 1)[:, :, None], k_K[None, None, :]
    allowed = make_mask_mod(view.attention, tokens)(
        rows_B11, torch.zeros((), dtype=torch.long, device=device), q_BW1, k_11K)
    key_ok_BK = real_BK | copy_BK
    allowed = allowed & key_ok_BK[:, None, :]
    query_ok_BW = key_ok_BK.gather(1, q_BW.clamp(max=key_len - 1)) & (q_BW < key_len)
    allowed = torch.where(query_ok_BW[:, :, None], allowed, k_11K == q_BW[:, :, None])
    return ~allowed[:, None]
