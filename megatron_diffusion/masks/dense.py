"""Attention masks of the three modes, as one predicate evaluated densely or by FlexAttention.

Convention: ``allowed[b, q, k]`` is True when query token ``q`` may attend key token ``k``
(megatron's own convention is the opposite, True = masked: see ``to_megatron_mask``). Modes
(docs/method.md 3-4): ``causal`` ``k <= q``; ``bidirectional`` everything; ``block`` (input
``x_t (+) x0``, ``S = 2L``) noisy tokens see their own block and the clean copies of strictly
earlier blocks, clean tokens see clean ones block-causally (or causally) and never a noisy one:
bd3lms' ``block_diff_mask`` (Arriola et al. 2025) and SDAR's ``block_attn_mask``. ``isolated``
visibility also keeps query and key in one document; ``shared`` (Stable-DiffCoder) does not.
docs/masks.md draws every case.

One definition, two evaluations: ``make_mask_mod`` returns the FlexAttention-style predicate
``mask_mod(b, h, q_idx, kv_idx)``, and ``attention_allowed`` calls that same function with
broadcast index grids, so the dense mask (SDPA, megatron's local attention) and the Flex
``BlockMask`` cannot drift apart. Every row allows its own diagonal, so no softmax row is empty.

Shape suffixes: ``B`` batch, ``L`` clean tokens per row, ``S`` model input length (``L`` or
``2L``).
"""

from dataclasses import dataclass

import torch

from megatron_diffusion import layout
from megatron_diffusion.masks.config import AttentionConfig


@dataclass(frozen=True)
class MaskTokens:
    """Per-token facts the mask predicate reads, over the model input (length ``S``)."""

    document_BS: torch.Tensor
    """int64 document of every token; the clean copy repeats the noisy copy's."""
    block_BS: torch.Tensor
    """int64 diffusion block of every token (0 outside block mode); the clean copy repeats."""
    clean_BS: torch.Tensor
    """bool: True for tokens of the clean copy ``x0`` (block mode), False for ``x_t``."""


def _check_document_ids(document_ids_BL: torch.Tensor) -> None:
    if document_ids_BL.dim() != 2 or document_ids_BL.dtype.is_floating_point:
        raise ValueError(
            f"document_ids_BL: expected an integer tensor [B, L], got {tuple(document_ids_BL.shape)} "
            f"{document_ids_BL.dtype}"
        )


def mask_tokens(cfg: AttentionConfig, document_ids_BL: torch.Tensor) -> MaskTokens:
    """Per-token documents, blocks and stream flags that the predicate indexes."""
    _check_document_ids(document_ids_BL)
    document_BL = document_ids_BL.long()
    if cfg.mode != "block":
        return MaskTokens(
            document_BS=document_BL,
            block_BS=torch.zeros_like(document_BL),
            clean_BS=torch.zeros_like(document_BL, dtype=torch.bool),
        )
    block_BL = layout.block_ids(document_BL, cfg.block_size, cfg.visibility)
    clean_BS = torch.zeros(document_BL.shape[0], 2 * document_BL.shape[1], dtype=torch.bool,
                           device=document_BL.device)
    clean_BS[:, document_BL.shape[1]:] = True
    return MaskTokens(
        document_BS=torch.cat([document_BL, document_BL], dim=-1),
        block_BS=torch.cat([block_BL, block_BL], dim=-1),
        clean_BS=clean_BS,
    )


def make_mask_mod(cfg: AttentionConfig, tokens: MaskTokens):
    """The predicate ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (True = may attend).

    Written with elementwise tensor ops only (no Python branching on values), so it runs under
    FlexAttention's vmap with scalar indices and, unchanged, on broadcast index grids.
    """
    isolated = cfg.visibility == "isolated"
    block_causal = cfg.clean_stream == "block_causal"
    doc, blk, clean = tokens.document_BS, tokens.block_BS, tokens.clean_BS
    if doc.shape[0] == 1:
        # One row stands for the whole batch (FlexAttention broadcasts a batch-1 BlockMask but
        # still calls mask_mod with the real batch index), so the batch index is not read.
        doc, blk, clean = doc[0], blk[0], clean[0]

        def at(t, b, i):
            return t[i]
    else:

        def at(t, b, i):
            return t[b, i]

    def mask_mod(b, h, q_idx, kv_idx):
        if cfg.mode == "causal":
            allowed = kv_idx <= q_idx
        elif cfg.mode == "bidirectional":
            allowed = (q_idx >= 0) & (kv_idx >= 0)
        else:  # block
            bq, bk = at(blk, b, q_idx), at(blk, b, kv_idx)
            cq, ck = at(clean, b, q_idx), at(clean, b, kv_idx)
            noisy_noisy = ~cq & ~ck & (bq == bk)
            noisy_clean = ~cq & ck & (bq > bk)
            clean_clean = cq & ck & ((bq >= bk) if block_causal else (kv_idx <= q_idx))
            allowed = noisy_noisy | noisy_clean | clean_clean
        if isolated:
            allowed = allowed & (at(doc, b, q_idx) == at(doc, b, kv_idx))
        return allowed

    return mask_mod


def attention_allowed(cfg: AttentionConfig, document_ids_BL: torch.Tensor) -> torch.Tensor:
    """Dense bool mask ``[B, S, S]``, True = query row may attend key column.

    ``S = L`` for causal/bidirectional, ``S = 2L`` for block (rows/columns ``0..L-1`` are the
    noisy copy ``x_t``, ``L..2L-1`` the clean copy ``x0``).
    """
    tokens = mask_tokens(cfg, document_ids_BL)
    B, S = tokens.document_BS.shape
    device = document_ids_BL.device
    # Index grids shaped so gathers stay [B, S, 1] / [B, 1, S]; only comparisons are [B, S, S].
    b_idx = torch.arange(B, device=device).view(B, 1, 1)
    h_idx = torch.zeros((), dtype=torch.long, device=device)
    q_idx = torch.arange(S, device=device).view(1, S, 1)
    kv_idx = torch.arange(S, device=device).view(1, 1, S)
    allowed = make_mask_mod(cfg, tokens)(b_idx, h_idx, q_idx, kv_idx)
    return allowed.expand(B, S, S).contiguous()


def to_megatron_mask(allowed_BSS: torch.Tensor) -> torch.Tensor:
    """megatron-core's convention: ``[B, 1, S, S]`` bool, True = masked out."""
    return ~allowed_BSS[:, None]


def position_ids_for_mode(document_ids_BL: torch.Tensor, cfg: AttentionConfig) -> torch.Tensor:
    """RoPE positions of the model input ``[B, S]``: ``layout.position_ids``, and in block mode
    the clean copy repeats the noisy copy's positions (docs/method.md 3)."""
    _check_document_ids(document_ids_BL)
    pos_BL = layout.position_ids(document_ids_BL, cfg.visibility)
    return torch.cat([pos_BL, pos_BL], dim=-1) if cfg.mode == "block" else pos_BL
