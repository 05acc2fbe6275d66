"""Attention masks of one sampler forward: clean context + each row's current noisy block.

A batch is a token buffer ``[b, C]``: each prompt left-padded to the longest (``P`` columns),
then the generation (``G`` columns, ``[MASK]`` until committed), then right padding up to a whole
number of blocks and scratch room. Generation proceeds in blocks of the inference block size
``B`` from column ``P``. **Rows advance independently**: row ``r`` is at its own block
``[block_start_r, block_start_r + B)``, so a row whose block is done never waits for the others.

One forward feeds, for row ``r``, the columns ``[in_start_r, in_end_r)``; columns before
``in_start_r`` are in the KV cache (``in_start = 0`` without one). Chunks are left-aligned in a
``[b, W]`` input (``W`` the widest chunk); a row's chunk is written to the cache at its own
offset, and the filler after a shorter chunk lands in scratch columns nobody reads. Columns
before a row's block are *clean* (prompt and finished blocks), the rest *noisy*. Query column
``i`` may attend key column ``j`` when (METHOD.md 3):

* ``j`` is a real column of the row: not left/right padding, not past ``in_end_r`` (scratch);
  queries that are padding or filler attend only themselves, so no softmax row is empty (their
  outputs are never read);
* clean ``i``, clean ``j``: the model's clean-stream rule — ``block``: block-causal over blocks
  of size ``B`` aligned to the prompt start (prompt) and to ``P`` (generation), the layout the
  clean copy ``x0`` has in block-mode training; ``causal``: ``j <= i``; ``all``: always;
* noisy ``i``, clean ``j``: always (every clean column is an earlier block);
* noisy ``i``, noisy ``j``: ``all`` (inside the block, bidirectional) or ``causal``;
* clean ``i``, noisy ``j``: only for full-sequence (bidirectional) models without a cache
  (with one, Seed Diffusion 3.4's prefix decoding: clean columns see only clean ones).

Because a clean column never attends a later one (for ``block``/``causal`` clean rules), its
keys/values are final once computed: the cache is exact (SDAR's commit pass, METHOD.md 8).
Shape suffixes: ``B`` batch rows, ``C`` buffer columns, ``W`` chunk width, ``K`` key columns.
"""

from dataclasses import dataclass

import torch


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
    def for_model(mode: str, clean_stream: str, prefix_cache: bool = False) -> "MaskRules":
        """``prefix_cache``: a bidirectional model decoded over prompt + finished blocks +
        current block with a cache (Seed Diffusion 3.4): clean columns attend only clean ones,
        so their keys/values can be cached when fed (approximate: training let them see the
        later positions)."""
        if mode == "block":
            return MaskRules(clean="block" if clean_stream == "block_causal" else "causal",
                             noisy="all", clean_sees_noisy=False)
        if mode == "causal":
            return MaskRules(clean="causal", noisy="causal", clean_sees_noisy=False)
        return MaskRules(clean="all", noisy="all", clean_sees_noisy=not prefix_cache)


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


def chunk_mask(rules: MaskRules, pad_B: torch.Tensor, blocks_BC: torch.Tensor, *,
               in_start_B: torch.Tensor, in_end_B: torch.Tensor, block_start_B: torch.Tensor,
               width: int, key_len: int, seq_end: int) -> torch.Tensor:
    """megatron mask ``[b, 1, width, key_len]`` (True = masked).

    Query ``w`` of row ``r`` is column ``in_start_r + w``; key ``k`` is column ``k``. Columns
    ``>= block_start_r`` are noisy; columns ``>= seq_end`` are right padding.
    """
    device = pad_B.device
    q_BW = in_start_B[:, None] + torch.arange(width, device=device)
    k_K = torch.arange(key_len, device=device)
    q_BW1, k_11K = q_BW[:, :, None], k_K[None, None, :]
    start_B11 = block_start_B[:, None, None]
    clean_q, clean_k = q_BW1 < start_B11, k_11K < start_B11
    if rules.clean == "block":
        block_q_BW = blocks_BC.gather(1, q_BW.clamp(max=blocks_BC.shape[1] - 1))
        clean_ok = blocks_BC[:, None, :key_len] <= block_q_BW[:, :, None]
    elif rules.clean == "causal":
        clean_ok = k_11K <= q_BW1
    else:
        clean_ok = torch.ones((), dtype=torch.bool, device=device)
    noisy_ok = (k_11K <= q_BW1) if rules.noisy == "causal" else torch.ones((), dtype=torch.bool,
                                                                          device=device)
    from_clean = clean_k & clean_ok
    if rules.clean_sees_noisy:
        from_clean = from_clean | ~clean_k
    from_noisy = clean_k | noisy_ok
    allowed = torch.where(clean_q, from_clean, from_noisy)
    pad_B1, end_B1 = pad_B[:, None], in_end_B[:, None]
    key_ok_BK = (k_K >= pad_B1) & (k_K < end_B1) & (k_K < seq_end)
    query_ok_BW = (q_BW >= pad_B1) & (q_BW < end_B1) & (q_BW < seq_end)
    allowed = allowed & key_ok_BK[:, None, :]
    allowed = torch.where(query_ok_BW[:, :, None], allowed, k_11K == q_BW1)  # self only
    return ~allowed[:, None]
