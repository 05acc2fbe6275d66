"""Reveal orders (distill/orders.py) on hand-made blocks and stub models."""

import itertools
import math

import pytest
import torch

from megatron_diffusion.distill import orders as T


def _count_stub(B: int):
    """log p(x0_i | state) = -(1 + i) / (1 + #revealed in the block), x0 = token 0 of 2."""
    def logp_fn(revealed_RNB):
        lp = -(1.0 + torch.arange(B)) / (1.0 + revealed_RNB.sum(-1, keepdim=True))
        return torch.stack([lp, torch.log1p(-lp.exp())], dim=-1)
    return logp_fn


def _random_stub(B: int, V: int = 5, seed: int = 0, N: int = 1):
    """Logits of every block depend on which of its positions are revealed (a linear map)."""
    g = torch.Generator().manual_seed(seed)
    W_NBV, U_NBX = torch.randn(N, B, V, generator=g), torch.randn(N, B, B * V, generator=g)

    def logp_fn(revealed_RNB):
        R = revealed_RNB.shape[0]
        mixed = torch.einsum("rnb,nbx->rnx", revealed_RNB.float(), U_NBX).view(R, N, B, V)
        return (W_NBV + mixed).log_softmax(-1)
    return logp_fn


def _block(logp_fn, n, N):
    """Block ``n`` of an ``N``-block row stub, seen as a one-block row."""
    def one(revealed_R1B):
        R, _, B = revealed_R1B.shape
        full = torch.zeros(R, N, B, dtype=torch.bool)
        full[:, n] = revealed_R1B[:, 0]
        return logp_fn(full)[:, n:n + 1]
    return one


def test_elbo_of_an_8_token_trajectory_equals_the_hand_sum():
    step_map = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    # before step k, 2k positions are revealed: positions 2k, 2k+1 each cost (1 + i) / (1 + 2k)
    by_hand = -(1 + 2) / 1 - (3 + 4) / 3 - (5 + 6) / 5 - (7 + 8) / 7
    elbo = T.trajectory_elbo(step_map, torch.zeros(1, 8, dtype=torch.long), _count_stub(8))
    assert elbo.tolist() == pytest.approx([by_hand], rel=1e-6)


def test_states_before_each_step():
    assert T.states(torch.tensor([1, 0, 1])).tolist() == [[False, False, False], [False, True, False]]
    assert T.states(torch.tensor([[0, 1], [0, 0]])).tolist() == [
        [[False, False], [False, False]], [[True, False], [True, True]]]


@pytest.mark.parametrize("bad", [[0, 2], [1, 1], [-1, 0], []])
def test_invalid_step_maps_are_refused(bad):
    with pytest.raises(ValueError, match="step_map"):
        T.check_step_map(torch.tensor(bad, dtype=torch.long))


def test_left_to_right():
    assert T.left_to_right(8, 2).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert T.left_to_right(3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dynamic_programme_finds_the_brute_force_best_order_of_every_block(seed):
    N, B = 3, 4
    logp_fn = _random_stub(B, seed=seed, N=N)
    x0 = torch.randint(0, 5, (N, B), generator=torch.Generator().manual_seed(seed))
    orders = torch.tensor(list(itertools.permutations(range(B)))).argsort(dim=1)  # step maps
    brute = torch.stack([T.trajectory_elbo(o.expand(N, B), x0, logp_fn) for o in orders]).max(0).values
    step_map, elbo = T.best_order(x0, logp_fn)
    assert [sorted(b) for b in step_map.tolist()] == [list(range(B))] * N
    assert elbo.tolist() == pytest.approx(brute.tolist(), abs=1e-5)
    assert T.trajectory_elbo(step_map, x0, logp_fn).tolist() == pytest.approx(elbo.tolist(), abs=1e-5)


def test_sampled_candidates_never_beat_the_exact_best_and_report_their_own_elbo():
    N, B = 2, 5
    logp_fn = _random_stub(B, seed=3, N=N)
    x0 = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    _, best = T.best_order(x0, logp_fn)
    candidates = [T.Candidate(s, t) for s, t in itertools.product(T.SCORES, (0.0, 0.5, 2.0))]
    step_maps, elbos = T.sample_orders(x0, logp_fn, candidates, generator=torch.Generator().manual_seed(0))
    assert step_maps.shape == (len(candidates), N, B) and elbos.shape == (len(candidates), N)
    for step_map, elbo in zip(step_maps, elbos):
        assert T.trajectory_elbo(step_map, x0, logp_fn).tolist() == pytest.approx(elbo.tolist(), abs=1e-5)
        assert (elbo <= best + 1e-5).all()


def test_a_row_of_blocks_equals_each_block_alone():
    N, B = 3, 4
    logp_fn = _random_stub(B, seed=5, N=N)
    x0 = torch.randint(0, 5, (N, B), generator=torch.Generator().manual_seed(5))
    row_map, row_elbo = T.best_order(x0, logp_fn)
    greedy_map, _ = T.sample_orders(x0, logp_fn, [T.Candidate()])
    for n in range(N):
        alone_map, alone_elbo = T.best_order(x0[n:n + 1], _block(logp_fn, n, N))
        assert alone_map[0].tolist() == row_map[n].tolist()
        assert float(alone_elbo[0]) == pytest.approx(float(row_elbo[n]), abs=1e-5)
        assert T.sample_orders(x0[n:n + 1], _block(logp_fn, n, N), [T.Candidate()])[0][0, 0].tolist() \
            == greedy_map[0, n].tolist()


def test_greedy_reveals_the_most_confident_position_first():
    confidence = torch.tensor([0.55, 0.9, 0.75, 0.6])  # the top-1 probability: all above 1/2

    def logp_fn(revealed_RNB):  # confidence fixed per position, whatever the state
        p = confidence.expand(*revealed_RNB.shape)
        return torch.stack([p, 1 - p], dim=-1).log()
    step_map, elbo = T.sample_orders(torch.zeros(1, 4, dtype=torch.long), logp_fn, [T.Candidate()])
    assert step_map[0, 0].tolist() == [3, 0, 1, 2]
    assert float(elbo[0, 0]) == pytest.approx(float(confidence.log().sum()), rel=1e-6)


def test_several_tokens_per_step_and_seeded_gumbel():
    logp_fn = _random_stub(6, seed=4)
    x0 = torch.zeros(1, 6, dtype=torch.long)
    step_map, _ = T.sample_orders(x0, logp_fn, [T.Candidate()], tokens_per_step=4)
    assert sorted(step_map[0, 0].tolist()) == [0, 0, 0, 0, 1, 1]
    hot = [T.Candidate("confidence", 5.0)] * 8
    orders = T.sample_orders(x0, logp_fn, hot, generator=torch.Generator().manual_seed(0))[0]
    assert len({tuple(o[0].tolist()) for o in orders}) > 1  # the noise changes the order ...
    again = T.sample_orders(x0, logp_fn, hot, generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(again, orders)  # ... and the seed fixes it


def test_exact_search_is_bounded_and_scores_are_named():
    with pytest.raises(ValueError, match="at most 6"):
        T.best_order(torch.zeros(1, 7, dtype=torch.long), _random_stub(7))
    with pytest.raises(ValueError, match="score"):
        T.position_scores(torch.zeros(2, 3), "nope")
    lp = torch.tensor([[math.log(0.7), math.log(0.2), math.log(0.1)]])
    assert T.position_scores(lp, "margin").item() == pytest.approx(0.5)
    assert T.position_scores(lp, "neg_entropy").item() == pytest.approx(
        0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert T.Candidate("margin", 0.5).label == "margin@0.5"
