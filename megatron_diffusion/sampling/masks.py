"""Attention masks of one sampler forward: clean context + the current noisy block, with a cache.

A batch is a token buffer ``[b, T]``: each prompt left-padded to the longest (``P`` columns), then
the generation region (``T - P`` columns, ``[MASK]`` until committed). Generation proceeds in
blocks of the inference block size ``B`` starting at column ``P``. One forward feeds the columns
``[start, end)``; the columns before ``start`` are in the KV cache (``start = 0`` without one).
Columns before the current block ``[block_start, ...)`` are *clean* (prompt and finished
blocks), the rest *noisy*. Query column ``i`` may attend key column ``j`` when (METHOD.md 3):

* ``j`` is not padding (``j >= pad_b``) — pad *queries* attend only themselves, so no softmax
  row is empty (their outputs are never read);
* clean ``i``, clean ``j``: the model's clean-stream rule — ``block``: block-causal over blocks
  of size ``B`` aligned to the prompt start (prompt) and to ``P`` (generation), the layout the
  clean copy ``x0`` has in block-mode training; ``causal``: ``j <= i``; ``all``: always;
* noisy ``i``, clean ``j``: always (every clean column is an earlier block);
* noisy ``i``, noisy ``j``: ``all`` (inside the block, bidirectional) or ``causal``;
* clean ``i``, noisy ``j``: only for full-sequence (bidirectional) models.

Because a clean column never attends a later one (for ``block``/``causal`` clean rules), its
keys/values are final once computed: the cache is exact (SDAR's commit pass, METHOD.md 8).
Shape suffixes: ``B`` batch rows, ``T`` buffer columns, ``Q`` query columns, ``K`` key columns.
"""

from dataclasses import dataclass

import torch

CLEAN_RULES = ("block", "causal", "all")
NOISY_RULES = ("all", "causal")


@dataclass(frozen=True)
class MaskRules:
    """How the trained model's attention translates to clean context + noisy block."""

    clean: str
    """Clean query -> clean key: ``block`` (block-causal), ``causal`` or ``all``."""
    noisy: str
    """Noisy query -> noisy key: ``all`` (bidirectional block) or ``causal``."""
    clean_sees_noisy: bool
    """Clean queries attend noisy keys too (full-sequence bidirectional models): no cache."""

    @staticmethod
    def for_model(mode: str, clean_stream: str) -> "MaskRules":
        if mode == "block":
            return MaskRules(clean="block" if clean_stream == "block_causal" else "causal",
                             noisy="all", clean_sees_noisy=False)
        if mode == "causal":
            return MaskRules(clean="causal", noisy="causal", clean_sees_noisy=False)
        return MaskRules(clean="all", noisy="all", clean_sees_noisy=True)


def clean_block_ids(pad_B: torch.Tensor, prompt_columns: int, total_columns: int,
                    block_size: int) -> torch.Tensor:
    """Block index of every buffer column ``[b, T]`` for the block-causal clean rule.

    Prompt blocks are counted from each row's first real token; generation blocks from column
    ``P`` on (the prompt's last block may be short). Padding gets -1 (never read).
    """
    col_T = torch.arange(total_columns, device=pad_B.device)
    prompt_len_B1 = (prompt_columns - pad_B)[:, None]
    in_prompt_BT = (col_T - pad_B[:, None]) // block_size
    num_prompt_blocks_B1 = (prompt_len_B1 + block_size - 1) // block_size
    in_gen_BT = num_prompt_blocks_B1 + (col_T - prompt_columns) // block_size
    ids_BT = torch.where(col_T < prompt_columns, in_prompt_BT, in_gen_BT)
    return torch.where(col_T >= pad_B[:, None], ids_BT, torch.full_like(ids_BT, -1))


def chunk_mask(rules: MaskRules, pad_B: torch.Tensor, clean_block_BT: torch.Tensor, *,
               start: int, block_start: int, end: int) -> torch.Tensor:
    """megatron mask ``[b, 1, end - start, end]`` (True = masked) for query columns
    ``[start, end)`` against key columns ``[0, end)``; columns ``>= block_start`` are noisy."""
    device = pad_B.device
    q_Q1 = torch.arange(start, end, device=device)[:, None]
    k_1K = torch.arange(end, device=device)[None, :]
    clean_q_Q1, clean_k_1K = q_Q1 < block_start, k_1K < block_start
    if rules.clean == "block":
        blocks_BT = clean_block_BT[:, :end]
        clean_ok = blocks_BT[:, None, :] <= blocks_BT[:, start:end, None]  # [b, Q, K]
    elif rules.clean == "causal":
        clean_ok = (k_1K <= q_Q1)[None]
    else:
        clean_ok = torch.ones(1, 1, 1, dtype=torch.bool, device=device)
    noisy_ok = (k_1K <= q_Q1) if rules.noisy == "causal" else torch.ones_like(clean_k_1K)
    from_clean = clean_k_1K & clean_ok
    if rules.clean_sees_noisy:
        from_clean = from_clean | ~clean_k_1K
    from_noisy = clean_k_1K | (~clean_k_1K & noisy_ok)
    allowed = torch.where(clean_q_Q1, from_clean, from_noisy)  # [b or 1, Q, K]
    pad_B11 = pad_B[:, None, None]
    allowed = allowed & (k_1K >= pad_B11)
    allowed = torch.where(q_Q1 < pad_B11, (k_1K == q_Q1), allowed)  # pad queries: self only
    return ~allowed[:, None]
