"""The on-policy objective (onpolicy/objective.py): numbers by hand, and the estimator on a toy
whose expected gradient is known in closed form."""

import math

import pytest
import torch

from megatron_diffusion.errors import UsageError
from megatron_diffusion.onpolicy.objective import (
    RewardConfig, dense_surrogate, group_advantages, policy_gradient_loss, policy_gradient_sum, k3_kl, reward,
    step_counts,
)


def test_surrogate_of_a_hand_made_trajectory():
    # Two blocks of 4: block 0 in steps 0 (2 tokens), 1 (1), 2 (1); block 1 in steps 3 (3), 4 (1).
    step_map = [0, 0, 1, 2, 3, 3, 3, 4]
    assert step_counts(step_map).tolist() == [2, 1, 1, 3, 1]
    surrogate, steps = dense_surrogate(step_map)
    assert steps == 5
    assert surrogate == pytest.approx(-(1 / 2 + 1 + 1 + 1 / 3 + 1))  # -3.8333...
    # one token per step: the surrogate is -|tau|; all six in one step: -1/6
    assert dense_surrogate(list(range(6))) == (-6.0, 6)
    assert dense_surrogate([0] * 6) == (pytest.approx(-1 / 6), 1)


def test_a_step_that_committed_nothing_counts_minus_one():
    # self-correction: forward 1 wrote a token that forward 2 overwrote; 3 forwards in all
    assert dense_surrogate([0, 2, 2], num_steps=3) == (pytest.approx(-(1 + 1 + 1 / 2)), 3)
    with pytest.raises(UsageError, match="num_steps"):
        step_counts([0, 3], num_steps=2)
    with pytest.raises(UsageError, match="step_map"):
        step_counts([])


def test_reward_combines_the_terms_higher_is_better():
    step_map = [0, 0, 1, 2, 3, 3, 3, 4]  # surrogate -23/6 over 8 tokens
    cfg = RewardConfig(surrogate_weight=2.0, verifier_weight=0.5).validate()
    assert reward(step_map, 1.0, cfg) == pytest.approx(2.0 * (-23 / 6) / 8 + 0.5)
    literal = RewardConfig(surrogate_weight=2.0, verifier_weight=0.5, normalise="none").validate()
    assert reward(step_map, 0.0, literal) == pytest.approx(2.0 * (-23 / 6))
    fast, slow = [0, 0, 0, 0], [0, 1, 2, 3]
    assert reward(fast, 1.0, cfg) > reward(slow, 1.0, cfg)  # fewer steps, same V: better
    assert reward(slow, 1.0, cfg) > reward(slow, 0.0, cfg)  # same steps, correct: better
    with pytest.raises(UsageError, match="verifier_score"):
        reward(fast, 1.5, cfg)


@pytest.mark.parametrize("field,value", [("surrogate_weight", -1.0), ("verifier_weight", "1"),
                                         ("normalise", "per_step")])
def test_reward_config_names_the_field(field, value):
    with pytest.raises(UsageError, match=field):
        RewardConfig(**{field: value}).validate()


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 6.0, 5.0, 3.0])
    groups = torch.tensor([7, 7, 7, 2, 9])  # prompt 7: 3 samples, prompt 2 and 9: one each
    loo = group_advantages(rewards, groups)
    assert loo.tolist() == pytest.approx([1 - 4, 2 - 3.5, 6 - 1.5, 0.0, 0.0])
    mean = group_advantages(rewards, groups, baseline="mean")
    assert mean.tolist() == pytest.approx([1 - 3, 2 - 3, 6 - 3, 0.0, 0.0])
    std = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 3)
    scaled = group_advantages(rewards, groups, baseline="mean", scale=True)
    assert scaled.tolist() == pytest.approx([-2 / std, -1 / std, 3 / std, 0.0, 0.0])


def test_equal_rewards_give_zero_advantage_even_when_scaled():
    rewards, groups = torch.tensor([0.5, 0.5, 0.5]), torch.zeros(3, dtype=torch.long)
    for baseline in ("leave_one_out", "mean"):
        out = group_advantages(rewards, groups, baseline=baseline, scale=True)
        assert torch.equal(out, torch.zeros(3)) and torch.isfinite(out).all()


def test_loss_normalises_per_token_and_adds_the_kl():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    adv = torch.tensor([2.0, -1.0])
    ref = torch.tensor([[-1.0, -1.0, 5.0], [-1.5, 7.0, 7.0]])  # unmasked entries must not count
    loss = policy_gradient_loss(logp, mask, adv, ref, kl_weight=0.5)
    k3 = (math.e - 1 - 1) + (math.exp(-1) + 1 - 1)  # d = +1 at [0, 1], d = -1 at [1, 0]
    assert loss.item() == pytest.approx(-(2 * (-3.0) + (-1) * (-0.5)) / 3 + 0.5 * k3 / 3)
    loss.backward()
    # d k3 / d logp = 1 - exp(d)
    kl_grad = torch.tensor([[0.0, 1 - math.e, 0.0], [1 - math.exp(-1), 0.0, 0.0]])
    pg_grad = torch.tensor([[-2 / 3, -2 / 3, 0.0], [1 / 3, 0.0, 0.0]])
    assert torch.allclose(logp.grad, pg_grad + 0.5 * kl_grad / 3)
    with pytest.raises(UsageError, match="ref_logp_NT"):
        policy_gradient_loss(logp, mask, adv, None, kl_weight=0.1)
    with pytest.raises(UsageError, match="mask"):
        policy_gradient_loss(logp, torch.zeros_like(mask), adv)


def test_no_anchor_reports_no_kl_and_needs_no_reference():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    total, kl = policy_gradient_sum(logp, torch.tensor([1.0, -1.0]), None, kl_weight=0.0)
    assert total.item() == pytest.approx(-(-1.0) + (-2.0)) and torch.equal(kl, torch.zeros(2))


def test_k3_is_zero_at_the_reference_and_positive_elsewhere():
    logp = torch.tensor([-1.0, -2.0, -0.1])
    assert torch.equal(k3_kl(logp, logp), torch.zeros(3))
    assert (k3_kl(logp, logp + torch.tensor([0.5, -0.5, 2.0])) > 0).all()


# --- the 2-action toy: softmax policy over logits theta, rewards r0, r1 -------------------------
R0, R1 = 1.0, 3.0  # both positive: without a baseline the estimator is noisy
THETA = (0.3, -0.4)


def _per_group_gradients(groups: int, group_size: int, seed: int, **advantage_kw) -> torch.Tensor:
    """``[groups, 2]``: the loss's gradient of each group of ``group_size`` samples (one prompt)."""
    theta = torch.tensor(THETA).repeat(groups, 1).requires_grad_()
    logp_M2 = theta.log_softmax(-1)
    g = torch.Generator().manual_seed(seed)
    actions_MG = torch.multinomial(logp_M2.detach().exp(), group_size, replacement=True, generator=g)
    rewards = torch.tensor([R0, R1])[actions_MG].reshape(-1)
    prompt = torch.arange(groups).repeat_interleave(group_size)
    if advantage_kw:
        adv = group_advantages(rewards, prompt, **advantage_kw)
    else:
        adv = rewards  # plain REINFORCE, no baseline
    token_logp = logp_M2.gather(1, actions_MG).reshape(-1, 1)
    policy_gradient_loss(token_logp, torch.ones_like(token_logp, dtype=torch.bool), adv).backward()
    return -theta.grad * groups  # the loss averages over all groups' samples: undo, and ascend


def _closed_form() -> float:
    p1 = torch.tensor(THETA).softmax(-1)[1].item()
    return p1 * (1 - p1) * (R1 - R0)


def test_reinforce_sign_and_scale_match_the_closed_form():
    """E[-grad loss] = dE[r]/dtheta_1 = p1 (1 - p1) (r1 - r0), within 5 standard errors."""
    grads = _per_group_gradients(groups=20000, group_size=1, seed=0)[:, 1]
    expected = _closed_form()
    p1 = torch.tensor(THETA).softmax(-1)[1].item()
    second_moment = (1 - p1) * R0 ** 2 * p1 ** 2 + p1 * R1 ** 2 * (1 - p1) ** 2
    stderr = math.sqrt((second_moment - expected ** 2) / grads.numel())
    assert expected > 0 and abs(grads.mean().item() - expected) < 5 * stderr
    # the two logits' gradients sum to 0 (softmax is shift-invariant)
    assert torch.allclose(_per_group_gradients(8, 1, seed=1).sum(-1), torch.zeros(8), atol=1e-6)


def test_leave_one_out_baseline_keeps_the_mean_and_lowers_the_variance():
    G, groups = 4, 5000
    plain = _per_group_gradients(groups, G, seed=2)[:, 1]
    loo = _per_group_gradients(groups, G, seed=2, baseline="leave_one_out")[:, 1]
    expected = _closed_form()
    for grads in (plain, loo):
        assert abs(grads.mean().item() - expected) < 5 * grads.std().item() / math.sqrt(groups)
    assert loo.var().item() < 0.25 * plain.var().item()


def test_mean_baseline_scales_the_expected_gradient_by_g_minus_1_over_g():
    G, groups = 2, 20000
    grads = _per_group_gradients(groups, G, seed=3, baseline="mean")[:, 1]
    expected = (G - 1) / G * _closed_form()
    assert abs(grads.mean().item() - expected) < 5 * grads.std().item() / math.sqrt(groups)
    assert abs(grads.mean().item() - _closed_form()) > 5 * grads.std().item() / math.sqrt(groups)
    scaled = _per_group_gradients(groups, G, seed=3, baseline="mean", scale=True)[:, 1]
    assert scaled.mean().item() > 0  # GRPO's std scaling changes the scale, not the sign


def test_kl_anchor_value_and_gradient_in_closed_form():
    """Over the tokens a softmax policy ``p`` draws, ``E[k3] = KL(p || q)`` and the expected
    gradient of the k3 term is ``p - q`` (that of ``KL(q || p)``): enumerated exactly."""
    theta = torch.tensor([THETA], requires_grad=True)
    q = torch.tensor([0.5, 0.5])
    p = theta.detach().softmax(-1)[0]
    value, grad = 0.0, torch.zeros(2)
    for x in range(2):  # each token, weighted by its probability under p
        theta.grad = None
        logp = theta.log_softmax(-1)[:, x:x + 1]
        loss = policy_gradient_loss(logp, torch.ones(1, 1, dtype=torch.bool), torch.zeros(1),
                                    q[x].log().view(1, 1), kl_weight=1.0)
        loss.backward()
        value += p[x].item() * loss.item()
        grad += p[x] * theta.grad[0]
    kl_pq = float((p * (p.log() - q.log())).sum())
    assert value == pytest.approx(kl_pq) and kl_pq > 0
    assert torch.allclose(grad, p - q, atol=1e-6)
