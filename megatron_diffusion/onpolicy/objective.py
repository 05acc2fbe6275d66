"""The on-policy objective of Seed Diffusion 3.3 (eq. 10-11), plain torch.

**Reward** (``RewardConfig``): ``R = surrogate_weight * steps_term + verifier_weight * V`` with
``V`` in ``[0, 1]`` the verifier's score and ``steps_term`` eq. 11's dense surrogate of the step
count, ``sum_k -1 / n_k`` over the steps of the trajectory (``n_k`` tokens revealed at step
``k``; ``dense_surrogate``), per completion token (``normalise="tokens"``, default) or as is
(``"none"``). **Estimator**: REINFORCE, ``E[(R - b) grad log pi(tau)]``, with the two standard
remedies for the instability the paper reports: a per-prompt baseline over a group of ``G``
trajectories (``group_advantages``: ``leave_one_out``, RLOO, or ``mean``, GRPO; optionally
scaled by the group's standard deviation) and a KL anchor to the frozen starting model
(``k3_kl``, Schulman's ``k3`` estimator, in ``policy_gradient_loss``). ``log pi(tau)`` includes
each open position's probability of staying open (``choice.py``), without which the step count
would give the gradient no signal. docs/onpolicy.md "Objective" and "Which estimator, and why"
have the derivations and the degenerate cases (tests/onpolicy/test_objective.py checks them in
closed form).
"""

from dataclasses import dataclass
from typing import Self

import torch

from megatron_diffusion.errors import UsageError, check_choice, check_range

NORMALISE = ("tokens", "none")
BASELINES = ("leave_one_out", "mean")


@dataclass
class RewardConfig:
    """How the step surrogate and the verifier score combine into the reward."""

    surrogate_weight: float = 1.0
    """Weight of the steps term (>= 0); 0 turns the speed objective off."""
    verifier_weight: float = 1.0
    """Weight of the verifier score V in [0, 1] (>= 0)."""
    normalise: str = "tokens"
    """``tokens``: the surrogate per completion token; ``none``: the surrogate as eq. 11 has it."""

    def validate(self) -> Self:
        check_range("surrogate_weight", self.surrogate_weight, lo=0)
        check_range("verifier_weight", self.verifier_weight, lo=0)
        check_choice("normalise", self.normalise, NORMALISE)
        return self


def step_counts(step_map: list[int] | torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
    """``[S]``: tokens committed at each step ``0..S-1`` (``S`` = ``num_steps`` or the last + 1)."""
    steps = torch.as_tensor(step_map, dtype=torch.long).reshape(-1)
    if steps.numel() == 0:
        raise UsageError("step_map: got no tokens, expected the commit step of each generated token")
    if int(steps.min()) < 0:
        raise UsageError(f"step_map: got step {int(steps.min())}, expected steps >= 0")
    last = int(steps.max()) + 1
    if num_steps is None:
        num_steps = last
    elif num_steps < last:
        raise UsageError(f"num_steps: got {num_steps}, expected >= {last} (the step map uses step {last - 1})")
    return torch.bincount(steps, minlength=num_steps)


def dense_surrogate(step_map: list[int] | torch.Tensor,
                    num_steps: int | None = None) -> tuple[float, int]:
    """``(sum_k -1 / n_k, |tau|)`` of one trajectory (eq. 11; an empty step counts -1)."""
    counts = step_counts(step_map, num_steps).double()
    return float(-(1.0 / counts.clamp_min(1)).sum()), int(counts.numel())


def reward(step_map: list[int] | torch.Tensor, verifier_score: float, cfg: RewardConfig,
           num_steps: int | None = None) -> float:
    """``R = surrogate_weight * steps_term + verifier_weight * V`` (higher is better)."""
    check_range("verifier_score", verifier_score, lo=0, hi=1)
    surrogate, _ = dense_surrogate(step_map, num_steps)
    if cfg.normalise == "tokens":
        surrogate /= torch.as_tensor(step_map).numel()
    return cfg.surrogate_weight * surrogate + cfg.verifier_weight * verifier_score


def group_advantages(rewards_N: torch.Tensor, groups_N: torch.Tensor, *,
                     baseline: str = "leave_one_out", scale: bool = False) -> torch.Tensor:
    """``[N]``: each trajectory's reward minus its prompt group's baseline (see the docstring)."""
    check_choice("baseline", baseline, BASELINES)
    rewards_N = rewards_N.double()
    _, inverse_N = torch.unique(groups_N, return_inverse=True)
    G = int(inverse_N.max()) + 1
    size_N = torch.bincount(inverse_N, minlength=G)[inverse_N].double()
    sum_N = torch.zeros(G, dtype=torch.double).index_add_(0, inverse_N, rewards_N)[inverse_N]
    if baseline == "mean":
        advantages_N = rewards_N - sum_N / size_N
    else:
        others_N = (size_N - 1).clamp_min(1)
        advantages_N = torch.where(size_N > 1, rewards_N - (sum_N - rewards_N) / others_N, 0.0)
    if scale:
        mean_N = sum_N / size_N
        var_G = torch.zeros(G, dtype=torch.double).index_add_(0, inverse_N, (rewards_N - mean_N) ** 2)
        std_N = (var_G[inverse_N] / size_N).sqrt()
        advantages_N = torch.where(std_N > 0, advantages_N / std_N.clamp_min(1e-300), 0.0)
    return advantages_N.to(torch.get_default_dtype())


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate ``k3 = exp(d) - d - 1``, ``d = log pi_ref(x) - log pi(x)``, for
    tokens ``x`` drawn from ``pi`` (>= 0; 0 where the two agree)."""
    d = ref_logp - logp
    return d.exp() - d - 1


def policy_gradient_sum(token_logp: torch.Tensor, advantages: torch.Tensor,
                        ref_logp: torch.Tensor | None = None,
                        kl_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_t -A_t log p_t + kl_weight * sum_t k3_t, k3_t)`` over aligned per-token tensors
    (``advantages`` detached here); ``k3_t`` is 0 without an anchor (``kl_weight == 0``). The
    loss's numerator, shared by ``policy_gradient_loss`` and the megatron loss (``loss.py``)."""
    check_range("kl_weight", kl_weight, lo=0)
    total = -(advantages.detach().to(token_logp.dtype) * token_logp).sum()
    if kl_weight == 0:
        return total, torch.zeros_like(token_logp)
    if ref_logp is None:
        raise UsageError("ref_logp_NT: got None with kl_weight > 0, expected the reference "
                         "log-probabilities")
    kl = k3_kl(token_logp, ref_logp)
    return total + kl_weight * kl.sum(), kl


def policy_gradient_loss(token_logp_NT: torch.Tensor, mask_NT: torch.Tensor, advantages_N: torch.Tensor,
                         ref_logp_NT: torch.Tensor | None = None, kl_weight: float = 0.0) -> torch.Tensor:
    """The batch's surrogate loss; its gradient is the REINFORCE estimator (+ the KL anchor's).

    ``token_logp_NT``: log-probability of each committed token under the policy (differentiable),
    ``mask_NT``: which entries are committed tokens, ``advantages_N``: constants (detached),
    ``ref_logp_NT``: the same tokens' log-probabilities under the frozen starting model,
    required when ``kl_weight > 0`` (the anchor is ``k3_kl`` of the two).
    """
    mask = mask_NT.bool()
    if not mask.any():
        raise UsageError("mask: got no committed tokens, expected at least one")
    advantages_NT = advantages_N.unsqueeze(1).expand_as(token_logp_NT)
    ref = None if ref_logp_NT is None else ref_logp_NT[mask]
    total, _ = policy_gradient_sum(token_logp_NT[mask], advantages_NT[mask], ref, kl_weight)
    return total / mask.sum()
