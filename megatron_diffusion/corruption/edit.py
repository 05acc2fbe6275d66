"""Edit-based corruption (METHOD.md 5, Seed Diffusion 3.1): deletions, insertions, substitutions.

Given a budget of ``k`` edit operations per row, the row ``x0`` (length ``L``) becomes a row
``y`` of the same length ``L`` with Levenshtein distance ``d(x0, y) <= num_edits <= k``.

Algorithm (all rows at once; no loop over tokens or ops):

1. Segments. Prompt tokens and document boundaries must not move, so the row is cut into
   segments: maximal runs of editable (non-prompt) tokens of one document; every prompt token is
   a segment of its own. Length-changing edits shift tokens only inside their segment.
2. Ops. ``K = max k`` distinct editable positions are drawn in a uniformly random order (top-K
   of random keys); op ``j`` of a row is a deletion of, an insertion of a random token before, or
   a substitution (by a random token different from the original) of its position, with the
   configured probabilities.
3. Realignment: pad or trim at the end of each segment. After its ops a segment whose length
   grew by ``n`` drops its last ``n`` tokens (``n`` deletions at its end); one that shrank by
   ``n`` is filled with ``n`` random tokens at its end (``n`` insertions). The target stays
   ``x0`` position by position. Realignment ops count against the budget: op ``j`` costs
   ``1 + |net_s after j| - |net_s before j|`` (``net_s`` the running length change of its
   segment), i.e. 0, 1 or 2, and the longest prefix of ops whose total cost is ``<= k`` is applied.
   ``num_edits`` = that cost = primary ops + realignment ops, an upper bound of the distance.
4. Emission. Kept token ``i`` lands at ``segment start + (tokens emitted before it in its
   segment)``; an inserted token before ``i`` lands just before it; anything past the segment's
   end is dropped; unfilled slots at the segment's end take random tokens. Two scatters; random
   tokens are drawn only for the ops and the padded slots.

The distance is below ``num_edits`` only when ops happen to cancel (a deletion next to an
insertion acts as one substitution; a trimmed token that was itself inserted), which is rare for
``k << L``; tests check it with rapidfuzz.

Shapes: ``B`` rows, ``L`` tokens, ``K`` op slots (the largest budget of the batch).
"""

import torch

from megatron_diffusion.layout import document_starts

DELETION, INSERTION, SUBSTITUTION = 0, 1, 2


def edit_segments(document_ids_BL: torch.Tensor, editable_BL: torch.Tensor) -> torch.Tensor:
    """bool ``[B, L]``: True where a segment starts (document start, prompt token, or the first
    editable token after a prompt token)."""
    starts_BL = document_starts(document_ids_BL) | ~editable_BL
    starts_BL[:, 1:] |= ~editable_BL[:, :-1]
    return starts_BL


def random_tokens(shape, random_token_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Tokens drawn uniformly from ``random_token_ids``."""
    idx = torch.randint(0, random_token_ids.numel(), shape, generator=generator,
                        device=random_token_ids.device)
    return random_token_ids[idx]


def substitute_tokens(x0_BL: torch.Tensor, random_token_ids: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
    """Per position, a token of ``random_token_ids`` different from ``x0`` (ids must be unique).

    Draw index ``i``; where ``ids[i]`` equals the original, take ``ids[(i + r) % n]`` with
    ``r ~ U{1..n-1}``, which is uniform over the other ids.
    """
    n = random_token_ids.numel()
    idx_BL = torch.randint(0, n, x0_BL.shape, generator=generator, device=x0_BL.device)
    shift_BL = torch.randint(1, n, x0_BL.shape, generator=generator, device=x0_BL.device)
    same_BL = random_token_ids[idx_BL] == x0_BL
    idx_BL = torch.where(same_BL, (idx_BL + shift_BL) % n, idx_BL)
    return random_token_ids[idx_BL]


def _segmented_cumsum(values_BK: torch.Tensor, groups_BK: torch.Tensor) -> torch.Tensor:
    """Inclusive cumsum of ``values`` along K restricted to equal ``groups`` (order kept)."""
    B, K = values_BK.shape
    cols_K = torch.arange(K, device=values_BK.device)
    order_BK = torch.argsort(groups_BK * K + cols_K, dim=1)
    groups_s = groups_BK.gather(1, order_BK)
    values_s = values_BK.gather(1, order_BK)
    cums_s = values_s.cumsum(1)
    is_start = torch.ones_like(groups_s, dtype=torch.bool)
    is_start[:, 1:] = groups_s[:, 1:] != groups_s[:, :-1]
    start_idx = torch.cummax(torch.where(is_start, cols_K, torch.zeros_like(cols_K)), dim=1).values
    within_s = cums_s - (cums_s - values_s).gather(1, start_idx)
    return torch.empty_like(within_s).scatter_(1, order_BK, within_s)


def apply_edits(x0_BL: torch.Tensor, document_ids_BL: torch.Tensor, editable_BL: torch.Tensor,
                budget_B: torch.Tensor, op_probs: tuple[float, float, float],
                random_token_ids: torch.Tensor, generator: torch.Generator):
    """Edit every row within its budget; returns ``(y_BL, num_edits_B)`` (module docstring).

    ``budget_B`` must not exceed the number of editable tokens of its row.
    """
    B, L = x0_BL.shape
    device = x0_BL.device
    K = int(budget_B.max()) if B > 0 else 0
    if K == 0:
        return x0_BL.clone(), torch.zeros(B, dtype=torch.long, device=device)

    seg_start_BL = edit_segments(document_ids_BL, editable_BL)
    seg_BL = seg_start_BL.long().cumsum(1) - 1

    # 2. ops: K distinct editable positions in random order, and their kinds.
    keys_BL = torch.rand(B, L, generator=generator, device=device)
    keys_BL = torch.where(editable_BL, keys_BL, torch.full_like(keys_BL, -1.0))
    pos_BK = torch.topk(keys_BL, K, dim=1).indices
    draw_BK = torch.rand(B, K, generator=generator, device=device)
    p_del, p_ins, _ = op_probs
    kind_BK = (draw_BK >= p_del).long() + (draw_BK >= p_del + p_ins).long()
    valid_BK = torch.arange(K, device=device) < budget_B[:, None]
    delta_BK = torch.where(kind_BK == INSERTION, 1, torch.where(kind_BK == DELETION, -1, 0))
    delta_BK = delta_BK * valid_BK

    # 3. cost of each op including the realignment it adds or saves; apply the affordable prefix.
    net_after_BK = _segmented_cumsum(delta_BK, seg_BL.gather(1, pos_BK))
    step_cost_BK = (1 + net_after_BK.abs() - (net_after_BK - delta_BK).abs()) * valid_BK
    cost_BK = step_cost_BK.cumsum(1)
    applied_BK = valid_BK & (cost_BK <= budget_B[:, None])
    num_edits_B = torch.where(applied_BK, cost_BK, torch.zeros_like(cost_BK)).amax(1)

    def flag(kind):
        out_BL = torch.zeros(B, L, dtype=torch.bool, device=device)
        return out_BL.scatter_(1, pos_BK, applied_BK & (kind_BK == kind))

    del_BL, ins_BL, sub_BL = flag(DELETION), flag(INSERTION), flag(SUBSTITUTION)

    # 4. emission, segment by segment, then pad/trim at each segment's end.
    cols_L = torch.arange(L, device=device)
    emitted_BL = ins_BL.long() + (~del_BL).long()
    before_BL = emitted_BL.cumsum(1) - emitted_BL
    start_BL = torch.cummax(torch.where(seg_start_BL, cols_L, torch.zeros_like(cols_L)), 1).values
    seg_len_BL = torch.zeros(B, L, dtype=torch.long, device=device)
    seg_len_BL = seg_len_BL.scatter_add_(1, seg_BL, torch.ones_like(seg_BL)).gather(1, seg_BL)
    ins_out_BL = start_BL + before_BL - before_BL.gather(1, start_BL)
    keep_out_BL = ins_out_BL + ins_BL.long()
    end_BL = start_BL + seg_len_BL

    # random tokens only where needed: at the ops' positions and at the padded slots
    x0_BK = x0_BL.gather(1, pos_BK)
    ins_tok_BL = torch.zeros_like(x0_BL).scatter_(
        1, pos_BK, random_tokens((B, K), random_token_ids, generator))
    sub_tok_BL = torch.zeros_like(x0_BL).scatter_(
        1, pos_BK, substitute_tokens(x0_BK, random_token_ids, generator))
    keep_tok_BL = torch.where(sub_BL, sub_tok_BL, x0_BL)
    dump = torch.full_like(cols_L, L).expand(B, L)  # extra column L collects dropped tokens
    ins_idx_BL = torch.where(ins_BL & (ins_out_BL < end_BL), ins_out_BL, dump)
    keep_idx_BL = torch.where(~del_BL & (keep_out_BL < end_BL), keep_out_BL, dump)
    y_BL1 = torch.empty(B, L + 1, dtype=x0_BL.dtype, device=device)
    y_BL1.scatter_(1, ins_idx_BL, ins_tok_BL).scatter_(1, keep_idx_BL, keep_tok_BL)
    written_BL1 = torch.zeros(B, L + 1, dtype=torch.bool, device=device)
    written_BL1.scatter_(1, ins_idx_BL, True).scatter_(1, keep_idx_BL, True)
    padded_BL = ~written_BL1[:, :L]
    y_BL1[:, :L][padded_BL] = random_tokens((int(padded_BL.sum()),), random_token_ids, generator)
    return y_BL1[:, :L].contiguous(), num_edits_B
