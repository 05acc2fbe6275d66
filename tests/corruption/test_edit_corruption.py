"""Edit corruption: hand-checked single ops, realignment, budget and Levenshtein distance."""

import torch
from hypothesis import given, settings, strategies as st
from rapidfuzz.distance import Levenshtein

from megatron_diffusion.corruption.edit import apply_edits, edit_segments, substitute_tokens
from megatron_diffusion.layout import block_ids, document_ids_from_lengths
from tests.corruption._helpers import RANDOM_IDS, clean_rows, gen

DEL, INS, SUB = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
ALL = torch.ones(1, 8, dtype=torch.bool)


def edit(x, budget, probs, seed=0, doc=None, editable=None):
    doc = torch.zeros_like(x) if doc is None else doc
    editable = torch.ones_like(x, dtype=torch.bool) if editable is None else editable
    return apply_edits(x, doc, editable, torch.tensor(budget), probs, RANDOM_IDS, gen(seed))


def removed_at(x, y):
    """Positions p such that y[:-1] == x without x[p]."""
    x, y = x.tolist(), y.tolist()
    return [p for p in range(len(x)) if x[:p] + x[p + 1:] == y[:-1]]


def test_one_deletion_costs_two_with_its_end_pad():
    x = torch.arange(10, 18).unsqueeze(0)
    # budget 2 = one deletion + one random token padded at the end; a second deletion won't fit
    for seed in range(10):
        y, n = edit(x, [2], DEL, seed=seed)
        p = removed_at(x[0], y[0])
        assert n.tolist() == [2] and p
        # deleting the last token then padding is one substitution: the distance drops to 1
        expected = 1 if p == [7] else 2
        assert Levenshtein.distance(x[0].tolist(), y[0].tolist()) == expected


def test_one_insertion_costs_two_with_its_end_trim():
    x = torch.arange(10, 18).unsqueeze(0)
    y, n = edit(x, [3], INS)  # 3 = one insertion + trim; a second insertion (2 more) won't fit
    assert n.tolist() == [2]
    assert removed_at(y[0], torch.cat([x[0, :7], x[0, :1]]))  # y without its new token == x[:7]


def test_substitutions_change_exactly_k_positions():
    x = torch.full((1, 8), 10)  # 10 is a random id too: substitution must still change it
    y, n = edit(x, [3], SUB)
    assert n.tolist() == [3] and (y != x).sum().item() == 3


def test_substitute_tokens_never_keeps_original():
    x = clean_rows(50, 16)
    assert bool((substitute_tokens(x, RANDOM_IDS, gen(0)) != x).all())


def test_prompt_and_documents_stay_in_place():
    x = torch.arange(10, 26).unsqueeze(0)
    doc = document_ids_from_lengths([6, 10]).unsqueeze(0)
    editable = torch.ones(1, 16, dtype=torch.bool)
    editable[0, 8:10] = False  # prompt of doc 1
    assert edit_segments(doc, editable)[0].nonzero().flatten().tolist() == [0, 6, 8, 9, 10]
    for seed in range(20):
        y, n = edit(x, [4], (0.5, 0.5, 0.0), seed=seed, doc=doc, editable=editable)
        assert y[0, 8:10].tolist() == [18, 19]
        per_segment = sum(Levenshtein.distance(x[0, a:b].tolist(), y[0, a:b].tolist())
                          for a, b in ((0, 6), (6, 8), (10, 16)))
        assert per_segment <= n.item() <= 4


def test_zero_budget_is_identity():
    x = clean_rows(2, 8)
    y, n = edit(x, [0, 0], DEL)
    assert torch.equal(y, x) and n.tolist() == [0, 0]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), lengths=st.lists(st.integers(1, 40), min_size=1, max_size=4),
       probs=st.sampled_from([(1/3, 1/3, 1/3), DEL, INS, SUB, (0.5, 0.5, 0.0)]))
def test_levenshtein_at_most_num_edits_at_most_budget(seed, lengths, probs):
    L = sum(lengths)
    doc = document_ids_from_lengths(lengths).unsqueeze(0).repeat(4, 1)
    x = clean_rows(4, L, seed=seed % 1000)
    g = gen(seed)
    editable = torch.rand(4, L, generator=g) > 0.1
    budget = torch.minimum(torch.randint(0, L // 3 + 1, (4,), generator=g), editable.sum(1))
    y, n = apply_edits(x, doc, editable, budget, probs, RANDOM_IDS, g)
    assert bool((y[~editable] == x[~editable]).all())
    for xi, yi, ni, bi in zip(x.tolist(), y.tolist(), n.tolist(), budget.tolist()):
        assert Levenshtein.distance(xi, yi) <= ni <= bi
        assert ni >= bi - 1 if probs == SUB or bi <= 1 else True


def test_distance_close_to_budget_on_average():
    L = 512
    x = clean_rows(32, L)
    budget = torch.full((32,), 51)  # eps = 0.1
    y, n = apply_edits(x, torch.zeros_like(x), torch.ones_like(x, dtype=torch.bool), budget,
                       (1/3, 1/3, 1/3), RANDOM_IDS, gen(1))
    d = torch.tensor([Levenshtein.distance(a, b) for a, b in zip(x.tolist(), y.tolist())])
    assert bool((d <= n).all()) and bool((n <= 51).all())
    assert d.float().mean().item() > 0.9 * 51


# Block-local edits (a block's edits stay in the block, within its budget) and bounded
# realignment (a window caps how far a deletion or insertion shifts later tokens). x0 holds
# distinct tokens >= 100 and the random tokens are 10..59, so every token >= 100 of an edited row
# names its source.

def source_positions(y):
    return torch.where(y >= 100, y - 100, torch.full_like(y, -1))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), lengths=st.lists(st.integers(1, 30), min_size=1, max_size=3),
       block_size=st.integers(1, 9), visibility=st.sampled_from(["shared", "isolated"]),
       probs=st.sampled_from([(1/3, 1/3, 1/3), DEL, INS, (0.5, 0.5, 0.0)]))
def test_block_edits_stay_in_their_block_within_its_budget(seed, lengths, block_size, visibility,
                                                           probs):
    L = sum(lengths)
    doc = document_ids_from_lengths(lengths).unsqueeze(0).repeat(4, 1)
    blocks = block_ids(doc, block_size, visibility)
    x = torch.arange(100, 100 + L).repeat(4, 1)
    g = gen(seed)
    editable = torch.rand(4, L, generator=g) > 0.1
    n_BN = torch.zeros(4, L, dtype=torch.long).scatter_add_(1, blocks, editable.long())
    budget = (torch.rand(4, L, generator=g) * (n_BN + 1)).long()  # 0..n_b per block
    y, n = apply_edits(x, doc, editable, budget, probs, RANDOM_IDS, g, groups_BL=blocks)
    src = source_positions(y)
    src_block = blocks.gather(1, src.clamp(min=0))
    assert bool(((src < 0) | (src_block == blocks)).all())  # no token leaves its block
    assert bool((y[~editable] == x[~editable]).all())
    for r in range(4):
        for b in blocks[r].unique().tolist():
            at = blocks[r] == b
            d = Levenshtein.distance(x[r, at].tolist(), y[r, at].tolist())
            assert d <= budget[r, b].item()
    assert bool((n <= budget.sum(1)).all())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), window=st.integers(1, 12), L=st.integers(8, 64))
def test_window_bounds_the_shift_and_the_distance(seed, window, L):
    x = torch.arange(100, 100 + L).repeat(4, 1)
    g = gen(seed)
    budget = torch.randint(0, L // 3 + 1, (4,), generator=g)
    y, n = apply_edits(x, torch.zeros_like(x), torch.ones_like(x, dtype=torch.bool), budget,
                       (1/3, 1/3, 1/3), RANDOM_IDS, g, window=window)
    src = source_positions(y)
    cols = torch.arange(L)
    assert bool(((src < 0) | (src // window == cols // window)).all())
    for xi, yi, ni, bi in zip(x.tolist(), y.tolist(), n.tolist(), budget.tolist()):
        assert Levenshtein.distance(xi, yi) <= ni <= bi


def test_window_keeps_hamming_near_levenshtein():
    """One deletion realigned at the row's end changes every later position; inside a window of
    8 the Hamming distance stays within ~2x the Levenshtein distance (docs/corruption.md)."""
    L = 128
    x = torch.arange(100, 100 + L).repeat(64, 1)
    doc, ed = torch.zeros_like(x), torch.ones_like(x, dtype=torch.bool)
    budget = torch.full((64,), 10)
    ratios = {}
    for window in (0, 8):
        y, _ = apply_edits(x, doc, ed, budget, (1/3, 1/3, 1/3), RANDOM_IDS, gen(3), window=window)
        lev = sum(Levenshtein.distance(a, b) for a, b in zip(x.tolist(), y.tolist()))
        ratios[window] = (y != x).sum().item() / lev
    assert ratios[8] < 2.5 < 6 < ratios[0]
