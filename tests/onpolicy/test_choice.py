"""The commit rule's choice in ``log pi(tau)`` (onpolicy/choice.py, loss.log_mass_in), against
exhaustive enumeration of the sampler's real rules (``sampling/strategies.py``) on 2-3 position
toys: every joint draw of a step, its probability, the positions the rule keeps. The formula's
probability of each outcome (kept positions and tokens) must equal the enumerated one; then
``E[R grad log pi]`` is the exact gradient of ``E[R]``.

An earlier formula took the open factor as ``sum_v p(v) 1[p(v) < threshold]`` everywhere: at a
threshold rule's fallback step (nothing reached the threshold, the most confident draw kept)
that is ~1 where the truth is the draw ranking below the kept one, and the fixed rule had no
factor at all.
"""

import itertools
import math

import pytest
import torch

from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.onpolicy.choice import CommitRule, open_cutoffs
from megatron_diffusion.onpolicy.loss import _read, log_mass_in
from megatron_diffusion.onpolicy.rows import Trajectory, policy_rows
from megatron_diffusion.sampling.strategies import select_fixed, select_threshold
from megatron_diffusion.training.forward_backward import ForwardSpec


def _keep(rule: CommitRule, conf_N: torch.Tensor, steps_left: int) -> torch.Tensor:
    masked = torch.ones(1, conf_N.numel(), dtype=torch.bool)
    if rule.strategy == "threshold":
        return select_threshold(masked, conf_N[None], rule.threshold)[0]
    return select_fixed(masked, conf_N[None], steps_left)[0]


def _enumerated(logits_NV: torch.Tensor, rule: CommitRule, steps_left: int) -> dict:
    """Outcome (kept positions and their tokens) -> probability, over every joint draw."""
    p_NV = logits_NV.softmax(-1).double()
    N, V = p_NV.shape
    outcomes: dict = {}
    for draw in itertools.product(range(V), repeat=N):
        conf_N = p_NV[torch.arange(N), torch.tensor(draw)]
        kept = _keep(rule, conf_N, steps_left)
        key = tuple((i, draw[i]) for i in range(N) if kept[i])
        outcomes[key] = outcomes.get(key, 0.0) + float(conf_N.prod())
    return outcomes


def _formula(logits_NV: torch.Tensor, key: tuple, rule: CommitRule) -> torch.Tensor:
    """log P(outcome) by the loss's formula: kept tokens' log p plus the open positions' log q."""
    logp_NV = logits_NV.log_softmax(-1)
    N = logits_NV.shape[0]
    kept = [i for i, _ in key]
    open_ = [i for i in range(N) if i not in kept]
    logp_K = torch.stack([logp_NV[i, v] for i, v in key])
    if not open_:
        return logp_K.sum()
    lt, le = open_cutoffs(logp_K.detach().exp(), torch.zeros(len(kept), dtype=torch.long),
                          torch.tensor(kept), torch.zeros(len(open_), dtype=torch.long),
                          torch.tensor(open_), rule)
    return logp_K.sum() + log_mass_in(logits_NV[open_], lt, le).sum()


TOYS = {
    "unconfident: every step a fallback": ([[0.3, 0.1, 0.0], [0.0, 0.2, 0.1]], CommitRule("threshold", 0.9)),
    "fallback and threshold steps mixed": ([[2.0, 0.5, 0.0], [0.0, 1.5, 0.2]], CommitRule("threshold", 0.5)),
    "identical positions: ties go left": ([[1.0, 0.0, -1.0], [1.0, 0.0, -1.0]], CommitRule("threshold", 0.8)),
    "fixed rule, 1 of 2": ([[0.3, 0.1, 0.0], [0.0, 0.2, 0.1]], CommitRule("fixed")),
    "fixed rule with ties": ([[1.0, 0.0, -1.0], [1.0, 0.0, -1.0]], CommitRule("fixed")),
    "fixed rule, 2 of 3": ([[0.5, 0.1, 0.0], [0.0, 0.9, 0.1], [0.2, 0.2, 0.0]], CommitRule("fixed")),
    "threshold, 3 positions": ([[0.5, 0.1, 0.0], [0.0, 0.9, 0.1], [0.2, 0.2, 0.0]], CommitRule("threshold", 0.45)),
}


@pytest.mark.parametrize("name", sorted(TOYS))
def test_the_formula_is_the_probability_of_every_outcome(name):
    rows, rule = TOYS[name]
    logits = torch.tensor(rows, dtype=torch.float64)
    steps_left = 2  # fixed: ceil(N / 2) kept
    outcomes = _enumerated(logits, rule, steps_left)
    assert sum(outcomes.values()) == pytest.approx(1.0, abs=1e-12)
    for key, prob in outcomes.items():
        assert math.exp(float(_formula(logits, key, rule))) == pytest.approx(prob, rel=1e-9, abs=1e-15), key


def _reward(key: tuple) -> float:
    """Any function of the outcome (kept positions and tokens) will do."""
    return len(key) + sum((i + 1) * (v + 2) for i, v in key) / 10


@pytest.mark.parametrize("name", sorted(TOYS))
def test_reinforce_with_the_formula_is_the_exact_gradient(name):
    """The exact gradient of ``E[R]`` by enumeration (the rule's choices are piecewise
    constant in theta) equals ``sum_tau P(tau) R(tau) grad log pi(tau)`` with the formula's
    ``log pi``: the estimator is unbiased for the rule the sampler runs."""
    rows, rule = TOYS[name]
    theta = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    N, V = theta.shape
    p = theta.softmax(-1)
    exact = torch.zeros((), dtype=torch.float64)
    for draw in itertools.product(range(V), repeat=N):
        conf = p[torch.arange(N), torch.tensor(draw)]
        kept = _keep(rule, conf.detach(), 2)
        exact = exact + conf.prod() * _reward(tuple((i, draw[i]) for i in range(N) if kept[i]))
    (grad_exact,) = torch.autograd.grad(exact, theta)
    estimate = torch.zeros_like(theta)
    for key, prob in _enumerated(theta.detach(), rule, 2).items():
        (g,) = torch.autograd.grad(_formula(theta, key, rule), theta)
        estimate += prob * _reward(key) * g
    assert torch.allclose(estimate, grad_exact, atol=1e-10), (estimate, grad_exact)
    assert grad_exact.abs().max() > 1e-3  # a real signal to recover


def test_the_old_threshold_factor_is_wrong_at_a_fallback_step():
    """The case the issue measured: nothing reaches 0.9, so the most confident draw is kept; the
    old factor (mass below the threshold) is 1 for the open position, the truth is less."""
    logits = torch.tensor(TOYS["unconfident: every step a fallback"][0], dtype=torch.float64)
    rule = CommitRule("threshold", 0.9)
    outcomes = _enumerated(logits, rule, 2)
    p = logits.softmax(-1)
    ratios = {key: outcomes[key] / float(p[key[0]]) for key in outcomes}  # truth / old
    key = min(ratios, key=ratios.get)
    assert ratios[key] < 0.5
    assert math.exp(float(_formula(logits, key, rule))) == pytest.approx(outcomes[key])


@pytest.mark.parametrize("shift", [False, True])
def test_read_gives_each_output_its_row_and_position(shift):
    """``_read``'s rows and positions, which group the kept and open positions by block state,
    follow the outputs' order under the block-mode logit shift too (first positions of a block
    are read from the clean stream there)."""
    traj = Trajectory([5, 6, 7, 8], [9, 10, 11, 12, 13, 14], [1, 0, 0, 2, 3, 3])
    pr = policy_rows(traj, block_size=4, seq_len=12, mask_id=99, pad_id=98)
    spec = ForwardSpec(AttentionConfig(mode="block", block_size=4), LossConfig(), logit_shift=shift)
    B, L = pr.batch.batch_size, pr.batch.seq_len
    out = torch.arange(B * 2 * L, dtype=torch.float32).view(B, 2 * L, 1).expand(B, 2 * L, 3)
    for where in (pr.batch.loss_mask_BL, pr.open_BL):
        _, targets, _, rows, pos = _read(out, pr.batch, spec, where)
        want = where.nonzero()
        assert sorted(zip(rows.tolist(), pos.tolist())) == sorted(map(tuple, want.tolist()))
        assert targets.tolist() == pr.batch.labels_BL[rows, pos].tolist()
