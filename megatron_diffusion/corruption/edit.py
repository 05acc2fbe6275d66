"""Edit-based corruption (docs/method.md 5, Seed Diffusion 3.1): deletions, insertions, substitutions.

Given a budget of ``k`` edit operations per budget group (the row in single mode, each diffusion
block in block mode), the row ``x0`` of length ``L`` becomes a row of the same length with
Levenshtein distance ``<= num_edits <= sum k``. All rows at once, no loop over tokens or ops:
(1) the row is cut into segments that length-changing edits cannot cross (runs of non-prompt
tokens of one document, cut at every block start and every ``edit_window`` columns); (2) each
group's first ``k`` positions of a random order are its op slots, each a deletion, insertion or
substitution; (3) each segment is realigned by trimming or padding its end, and those realignment
ops count against the budget (an op costs 0, 1 or 2; each group keeps the longest prefix of ops
within ``k``); (4) two scatters emit the tokens. docs/corruption.md "Edit stage" has the rules
and the measured Hamming/Levenshtein ratio.

Shapes: ``B`` rows, ``L`` tokens, ``N`` budget groups, ``K = L`` op slots (slot order).
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


def window_starts(length: int, window: int, device=None) -> torch.Tensor:
    """bool ``[L]``: True every ``window`` columns (realignment windows; 0 = none)."""
    cols_L = torch.arange(length, device=device)
    if window <= 0:
        return cols_L < 0
    return cols_L % window == 0


def _rank_in_group(groups_BL: torch.Tensor, editable_BL: torch.Tensor,
                   generator: torch.Generator):
    """Op slots: every position in a uniformly random order inside its group, editable first.

    Returns ``(pos_BL, rank_BL)``: slot ``j`` edits position ``pos[j]``, the ``rank[j]``-th op
    of its group (non-editable positions rank past every budget).
    """
    B, L = groups_BL.shape
    keys_BL = torch.rand(B, L, generator=generator, device=groups_BL.device, dtype=torch.float64)
    keys_BL = torch.where(editable_BL, 0.5 * keys_BL, torch.full_like(keys_BL, 0.75))
    pos_BL = torch.argsort(groups_BL.double() + keys_BL, dim=1)
    cols_L = torch.arange(L, device=groups_BL.device)
    g_s = groups_BL.gather(1, pos_BL)
    first = torch.ones_like(g_s, dtype=torch.bool)
    first[:, 1:] = g_s[:, 1:] != g_s[:, :-1]
    start_s = torch.cummax(torch.where(first, cols_L, torch.zeros_like(cols_L)), 1).values
    rank_BL = cols_L - start_s
    rank_BL = torch.where(editable_BL.gather(1, pos_BL), rank_BL, torch.full_like(rank_BL, L))
    return pos_BL, rank_BL


def apply_edits(x0_BL: torch.Tensor, document_ids_BL: torch.Tensor, editable_BL: torch.Tensor,
                budget_BN: torch.Tensor, op_probs: tuple[float, float, float],
                random_token_ids: torch.Tensor, generator: torch.Generator,
                groups_BL: torch.Tensor | None = None, window: int = 0):
    """Edit every budget group within its budget; returns ``(y_BL, num_edits_B)``.

    ``budget_BN``: ``[B]`` (one group per row) or ``[B, N]`` with ``groups_BL`` in ``[0, N)``
    (block mode: the group is the block, which is also a segment, so no token leaves it).
    ``window > 0`` also starts a segment every ``window`` columns, bounding the shift. A budget
    must not exceed its group's editable tokens. See the module docstring.
    """
    B, L = x0_BL.shape
    device = x0_BL.device
    budget_BN = budget_BN.reshape(B, -1).long()
    if groups_BL is None:
        groups_BL = torch.zeros(B, L, dtype=torch.long, device=device)
    if B == 0 or int(budget_BN.max()) == 0:
        return x0_BL.clone(), torch.zeros(B, dtype=torch.long, device=device)

    seg_start_BL = edit_segments(document_ids_BL, editable_BL) | window_starts(L, window, device)
    seg_start_BL[:, 1:] |= groups_BL[:, 1:] != groups_BL[:, :-1]
    seg_BL = seg_start_BL.long().cumsum(1) - 1

    # 2. ops: the first budget positions of each group's random order, and their kinds.
    pos_BK, rank_BK = _rank_in_group(groups_BL, editable_BL, generator)
    group_BK = groups_BL.gather(1, pos_BK)
    group_budget_BK = budget_BN.gather(1, group_BK)
    draw_BK = torch.rand(B, L, generator=generator, device=device)
    p_del, p_ins, _ = op_probs
    kind_BK = (draw_BK >= p_del).long() + (draw_BK >= p_del + p_ins).long()
    # a length-changing op costs 2 in a fresh segment: a budget of 1 can only substitute
    kind_BK = torch.where(group_budget_BK == 1, SUBSTITUTION, kind_BK)
    valid_BK = rank_BK < group_budget_BK
    delta_BK = torch.where(kind_BK == INSERTION, 1, torch.where(kind_BK == DELETION, -1, 0))
    delta_BK = delta_BK * valid_BK

    # 3. cost of each op including the realignment it adds or saves; apply each group's
    # affordable prefix.
    net_after_BK = _segmented_cumsum(delta_BK, seg_BL.gather(1, pos_BK))
    step_cost_BK = (1 + net_after_BK.abs() - (net_after_BK - delta_BK).abs()) * valid_BK
    cost_BK = _segmented_cumsum(step_cost_BK, group_BK)
    applied_BK = valid_BK & (cost_BK <= group_budget_BK)
    num_edits_B = torch.where(applied_BK, step_cost_BK, torch.zeros_like(step_cost_BK)).sum(1)
    y_BL = _emit(x0_BL, seg_start_BL, seg_BL, pos_BK, applied_BK, kind_BK, random_token_ids,
                 generator)
    return y_BL, num_edits_B


def _emit(x0_BL, seg_start_BL, seg_BL, pos_BK, applied_BK, kind_BK, random_token_ids, generator):
    """4. emission, segment by segment, then pad/trim at each segment's end."""
    B, L = x0_BL.shape
    device = x0_BL.device

    def flag(kind):
        out_BL = torch.zeros(B, L, dtype=torch.bool, device=device)
        return out_BL.scatter_(1, pos_BK, applied_BK & (kind_BK == kind))

    del_BL, ins_BL, sub_BL = flag(DELETION), flag(INSERTION), flag(SUBSTITUTION)
    cols_L = torch.arange(L, device=device)
    emitted_BL = ins_BL.long() + (~del_BL).long()
    before_BL = emitted_BL.cumsum(1) - emitted_BL
    start_BL = torch.cummax(torch.where(seg_start_BL, cols_L, torch.zeros_like(cols_L)), 1).values
    seg_len_BL = torch.zeros(B, L, dtype=torch.long, device=device)
    seg_len_BL = seg_len_BL.scatter_add_(1, seg_BL, torch.ones_like(seg_BL)).gather(1, seg_BL)
    ins_out_BL = start_BL + before_BL - before_BL.gather(1, start_BL)
    keep_out_BL = ins_out_BL + ins_BL.long()
    end_BL = start_BL + seg_len_BL

    ins_tok_BL = random_tokens((B, L), random_token_ids, generator)
    sub_tok_BL = substitute_tokens(x0_BL, random_token_ids, generator)
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
    return y_BL1[:, :L].contiguous()
