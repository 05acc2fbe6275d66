"""Reveal orders (sampling/trajectory.py) on hand-made blocks and stub models."""

import itertools
import math

import pytest
import torch

from megatron_diffusion.sampling import trajectory as T


def _count_stub(B: int):
    """log p(x0_i | state) = -(1 + i) / (1 + #revealed), x0 = token 0 of a 2-token vocabulary."""
    def logp_fn(revealed_RB):
        lp_RB = -(1.0 + torch.arange(B)) / (1.0 + revealed_RB.sum(-1, keepdim=True))
        return torch.stack([lp_RB, torch.log1p(-lp_RB.exp())], dim=-1)
    return logp_fn


def _random_stub(B: int, V: int = 5, seed: int = 0):
    """Logits that depend on which positions are revealed (a linear map of the state)."""
    g = torch.Generator().manual_seed(seed)
    W_BV, U_B_BV = torch.randn(B, V, generator=g), torch.randn(B, B * V, generator=g)

    def logp_fn(revealed_RB):
        logits = W_BV + (revealed_RB.float() @ U_B_BV).view(-1, B, V)
        return logits.log_softmax(-1)
    return logp_fn


def test_elbo_of_an_8_token_trajectory_equals_the_hand_sum():
    step_map = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    # before step k, 2k positions are revealed: positions 2k, 2k+1 each cost (1 + i) / (1 + 2k)
    by_hand = -(1 + 2) / 1 - (3 + 4) / 3 - (5 + 6) / 5 - (7 + 8) / 7
    elbo = T.trajectory_elbo(step_map, torch.zeros(8, dtype=torch.long), _count_stub(8))
    assert elbo == pytest.approx(by_hand, rel=1e-6)


def test_states_before_each_step():
    assert T.states(torch.tensor([1, 0, 1])).tolist() == [[False, False, False], [False, True, False]]


@pytest.mark.parametrize("bad", [[0, 2], [1, 1], [-1, 0], []])
def test_invalid_step_maps_are_refused(bad):
    with pytest.raises(ValueError, match="step_map"):
        T.check_step_map(torch.tensor(bad, dtype=torch.long))


def test_left_to_right():
    assert T.left_to_right(8, 2).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert T.left_to_right(3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dynamic_programme_finds_the_brute_force_best_order(seed):
    B = 4
    logp_fn = _random_stub(B, seed=seed)
    x0 = torch.randint(0, 5, (B,), generator=torch.Generator().manual_seed(seed))
    brute = max(T.trajectory_elbo(torch.tensor(perm).argsort(), x0, logp_fn)
                for perm in itertools.permutations(range(B)))
    step_map, elbo = T.best_order(x0, logp_fn)
    T.check_step_map(step_map)
    assert sorted(step_map.tolist()) == list(range(B))
    assert elbo == pytest.approx(brute, abs=1e-5)
    assert T.trajectory_elbo(step_map, x0, logp_fn) == pytest.approx(elbo, abs=1e-5)


def test_sampled_candidates_never_beat_the_exact_best_and_report_their_own_elbo():
    B = 5
    logp_fn = _random_stub(B, seed=3)
    x0 = torch.tensor([0, 1, 2, 3, 4])
    _, best = T.best_order(x0, logp_fn)
    g = torch.Generator().manual_seed(0)
    for score, temperature in itertools.product(T.SCORES, (0.0, 0.5, 2.0)):
        step_map, elbo = T.sample_order(x0, logp_fn, score=score, temperature=temperature, generator=g)
        T.check_step_map(step_map)
        assert elbo == pytest.approx(T.trajectory_elbo(step_map, x0, logp_fn), abs=1e-5)
        assert elbo <= best + 1e-5


def test_greedy_reveals_the_most_confident_position_first():
    confidence = torch.tensor([0.55, 0.9, 0.75, 0.6])  # the top-1 probability: all above 1/2

    def logp_fn(revealed_RB):  # confidence fixed per position, whatever the state
        p_RB = confidence.expand(revealed_RB.shape[0], -1)
        return torch.stack([p_RB, 1 - p_RB], dim=-1).log()
    step_map, elbo = T.sample_order(torch.zeros(4, dtype=torch.long), logp_fn, score="confidence")
    assert step_map.tolist() == [3, 0, 1, 2]
    assert elbo == pytest.approx(float(confidence.log().sum()), rel=1e-6)


def test_several_tokens_per_step_and_seeded_gumbel():
    logp_fn = _random_stub(6, seed=4)
    x0 = torch.zeros(6, dtype=torch.long)
    step_map, _ = T.sample_order(x0, logp_fn, tokens_per_step=4)
    assert sorted(step_map.tolist()) == [0, 0, 0, 0, 1, 1]
    orders = {tuple(T.sample_order(x0, logp_fn, temperature=5.0,
                                   generator=torch.Generator().manual_seed(s))[0].tolist())
              for s in range(8)}
    assert len(orders) > 1  # the noise changes the order ...
    again = T.sample_order(x0, logp_fn, temperature=5.0, generator=torch.Generator().manual_seed(0))[0]
    first = T.sample_order(x0, logp_fn, temperature=5.0, generator=torch.Generator().manual_seed(0))[0]
    assert again.tolist() == first.tolist()  # ... and the seed fixes it


def test_exact_search_is_bounded_and_scores_are_named():
    with pytest.raises(ValueError, match="at most 6"):
        T.best_order(torch.zeros(7, dtype=torch.long), _random_stub(7))
    with pytest.raises(ValueError, match="score"):
        T.position_scores(torch.zeros(2, 3), "nope")
    lp = torch.tensor([[math.log(0.7), math.log(0.2), math.log(0.1)]])
    assert T.position_scores(lp, "margin").item() == pytest.approx(0.5)
    assert T.position_scores(lp, "neg_entropy").item() == pytest.approx(
        0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
