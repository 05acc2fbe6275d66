"""Block diffusion corruption (docs/method.md 3, Stable-DiffCoder 3.3).

The row is cut into blocks by ``layout.block_ids`` (blocks restart at every document when
visibility is 'isolated'). Block ``b`` draws its own level ``t_b`` and masks its tokens with the
clipped rate

    u_blk(t_b) = min(1, max(u(t_b), 1/B))          (B = block_size)

so a block expects at least one masked token, and the ELBO weight ``u'(t_b) / u_blk`` stays
bounded by ``B * max u'``. If a block still ends with no masked token, one of its eligible
(non-prompt) tokens, chosen uniformly, is masked. Everything is vectorised with gathers and
``scatter_reduce`` over block ids; nothing loops over tokens or blocks.

Shapes: ``B`` rows, ``L`` tokens, ``N`` block slots per row (see ``num_block_slots``).
"""

import math

import torch


def num_block_slots(seq_len: int, block_size: int, visibility: str) -> int:
    """Fixed width ``N`` of ``t_BN`` in block mode, independent of the documents of a row.

    shared: exactly ``ceil(L / B)`` blocks. isolated: a row of ``D`` documents has at most
    ``ceil(L / B) + D - 1`` blocks and ``D <= L``, so ``N = L`` is the only bound that holds for
    every packing. Unused slots hold NaN (use ``torch.nanmean`` for statistics).
    """
    if visibility == "shared":
        return math.ceil(seq_len / block_size)
    return seq_len


def clipped_rate(u_BL: torch.Tensor, block_size: int) -> torch.Tensor:
    """``u_blk = min(1, max(u, 1/B))``."""
    return u_BL.clamp(min=1.0 / block_size, max=1.0)


def ensure_one_masked(masked_BL: torch.Tensor, blocks_BL: torch.Tensor, eligible_BL: torch.Tensor,
                      num_slots: int, generator: torch.Generator | None, *,
                      keys_BL: torch.Tensor | None = None) -> torch.Tensor:
    """Mask one uniformly chosen eligible token in every block that has none masked.

    Every eligible token gets a random key; the block's maximum key picks its fallback token.
    By default the keys are random integers made unique by their column (``key * L + i``),
    drawn from ``generator``. ``keys_BL`` passes other i.i.d. keys instead (fixed-rate masking's
    uniform floats, ``fixed_rate.py``; equal float keys, rare, mask each of the tied tokens).
    Blocks without eligible tokens (all prompt) stay clean. ``num_slots``: at least the number
    of blocks in a row.
    """
    B, L = masked_BL.shape
    device = masked_BL.device
    count_BN = torch.zeros(B, num_slots, dtype=torch.long, device=device)
    count_BN.scatter_add_(1, blocks_BL, masked_BL.long())
    needs_BL = count_BN.gather(1, blocks_BL) == 0

    if keys_BL is None:
        cols_L = torch.arange(L, device=device)
        keys_BL = torch.randint(0, 2**40, (B, L), generator=generator, device=device) * L + cols_L
    keys_BL = torch.where(eligible_BL, keys_BL, torch.full_like(keys_BL, -1))
    best_BN = torch.full((B, num_slots), -1, dtype=keys_BL.dtype, device=device)
    best_BN.scatter_reduce_(1, blocks_BL, keys_BL, reduce="amax", include_self=True)
    chosen_BL = needs_BL & eligible_BL & (keys_BL == best_BN.gather(1, blocks_BL))
    return masked_BL | chosen_BL
