"""Reveal orders of the blocks of a row: step maps, their ELBO, candidates and the exact best order.

Seed Diffusion 3.2 (docs/method.md 6) distils trajectories whose tokens are the data's and whose
*order* is searched. A block's trajectory is a ``step_map``: ``step_map[i]`` is the step (from 0)
at which position ``i`` is revealed; several positions may share a step. Everything works on the
``N`` blocks of a row at once, through ``logp_fn(revealed_RNB) -> logp_RNBV`` (one forward of a
row evaluates a different state in every block; ``distill.row_model`` is the real one, tests use
stubs). ``trajectory_elbo`` is eq. 7-8's ELBO of an order, ``sample_orders`` the scored and
Gumbel-top-k candidates, ``left_to_right`` the plain order and ``best_order`` the exact best
one-token-per-step order for ``B <= 6`` (dynamic programming over the ``2^B`` revealed subsets).
``check_step_map`` also checks the step maps the sampler records per block. docs/distillation.md
has the search as ``distill-trajectories`` runs it.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

LogProbFn = Callable[[torch.Tensor], torch.Tensor]
SCORES = ("confidence", "margin", "neg_entropy")
MAX_EXACT_BLOCK = 6


@dataclass(frozen=True)
class Candidate:
    """How one candidate order is drawn."""

    score: str = "confidence"
    temperature: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.score}@{self.temperature:g}"


def check_step_map(step_map_B: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every position has a step and the steps are 0..S-1."""
    if step_map_B.dim() != 1 or step_map_B.numel() == 0:
        raise ValueError(f"step_map: expected a non-empty 1-d tensor, got shape {tuple(step_map_B.shape)}")
    used = sorted(set(step_map_B.tolist()))
    if used != list(range(len(used))):
        raise ValueError(f"step_map: steps must be 0..S-1 with none skipped, got {used}")


def states(step_map_NB: torch.Tensor) -> torch.Tensor:
    """``[S, N, B]`` bool: the revealed positions before each step (S: the longest block's)."""
    steps_S = torch.arange(int(step_map_NB.max()) + 1)
    return step_map_NB.unsqueeze(0) < steps_S.view(-1, *[1] * step_map_NB.dim())


def data_logp(logp_RNBV: torch.Tensor, x0_NB: torch.Tensor) -> torch.Tensor:
    """``[R, N, B]``: log p(x0_i | state r)."""
    index = x0_NB.expand(logp_RNBV.shape[0], *x0_NB.shape).unsqueeze(-1)
    return logp_RNBV.gather(-1, index).squeeze(-1)


def trajectory_elbo(step_map_NB: torch.Tensor, x0_NB: torch.Tensor,
                    logp_fn: LogProbFn) -> torch.Tensor:
    """``[N]``: each block's ELBO of revealing ``x0`` in the order ``step_map``."""
    for step_map_B in step_map_NB:
        check_step_map(step_map_B)
    before_SNB = states(step_map_NB)
    lp_SNB = data_logp(logp_fn(before_SNB), x0_NB)
    steps_S = torch.arange(before_SNB.shape[0]).view(-1, 1, 1)
    return (lp_SNB * (step_map_NB.unsqueeze(0) == steps_S)).sum(dim=(0, 2))


def position_scores(logp_BV: torch.Tensor, score: str) -> torch.Tensor:
    """How sure the model is at each position (higher = reveal earlier); any leading dims."""
    if score == "confidence":
        return logp_BV.max(dim=-1).values.exp()
    if score == "margin":
        top2 = logp_BV.topk(2, dim=-1).values.exp()
        return top2[..., 0] - top2[..., 1]
    if score == "neg_entropy":
        return (logp_BV.exp() * logp_BV).sum(dim=-1)
    raise ValueError(f"score: got {score!r}, expected one of {SCORES}")


def _keys(logp_KNBV, candidates, generator) -> torch.Tensor:
    """Each candidate's reveal priority of every position: its score plus its Gumbel noise."""
    keys = []
    for k, c in enumerate(candidates):
        key_NB = position_scores(logp_KNBV[k], c.score)
        if c.temperature > 0:
            uniform = torch.rand(key_NB.shape, generator=generator).clamp_min(1e-20)
            key_NB = key_NB + c.temperature * -torch.log(-torch.log(uniform))
        keys.append(key_NB)
    return torch.stack(keys)


def sample_orders(x0_NB: torch.Tensor, logp_fn: LogProbFn, candidates: list[Candidate], *,
                  tokens_per_step: int = 1, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(step_map_KNB, elbo_KN)`` of ``K`` candidates, one batched forward per step."""
    K, (N, B) = len(candidates), x0_NB.shape
    revealed_KNB = torch.zeros(K, N, B, dtype=torch.bool)
    step_map_KNB = torch.full((K, N, B), -1, dtype=torch.long)
    elbo_KN = torch.zeros(K, N)
    for step in range(-(-B // tokens_per_step)):
        logp_KNBV = logp_fn(revealed_KNB)
        keys_KNB = _keys(logp_KNBV, candidates, generator).masked_fill(revealed_KNB, float("-inf"))
        n = min(tokens_per_step, B - step * tokens_per_step)
        chosen_KNB = torch.zeros_like(revealed_KNB).scatter_(-1, keys_KNB.topk(n, dim=-1).indices, True)
        elbo_KN += (data_logp(logp_KNBV, x0_NB) * chosen_KNB).sum(dim=-1)
        revealed_KNB |= chosen_KNB
        step_map_KNB[chosen_KNB] = step
    return step_map_KNB, elbo_KN


def left_to_right(block_size: int, tokens_per_step: int = 1) -> torch.Tensor:
    """The step map of revealing ``tokens_per_step`` positions per step, left to right."""
    return torch.arange(block_size) // tokens_per_step


def _subsets(B: int) -> torch.Tensor:
    """``[2^B, B]``: subset ``s`` reveals position ``i`` when bit ``i`` of ``s`` is set."""
    return (torch.arange(1 << B).unsqueeze(1) >> torch.arange(B)) & 1 > 0


def best_order(x0_NB: torch.Tensor, logp_fn: LogProbFn) -> tuple[torch.Tensor, torch.Tensor]:
    """``(step_map_NB, elbo_N)``: every block's exact best one-token-per-step order."""
    N, B = x0_NB.shape
    if B > MAX_EXACT_BLOCK:
        raise ValueError(f"best_order: block of {B} positions, the exact search takes at most {MAX_EXACT_BLOCK}")
    subsets_SB = _subsets(B)
    lp_SNB = data_logp(logp_fn(subsets_SB.unsqueeze(1).expand(-1, N, -1)), x0_NB)
    full = (1 << B) - 1
    value_SN = torch.zeros(1 << B, N)  # best ELBO of revealing what subset s lacks
    choice_SN = torch.zeros(1 << B, N, dtype=torch.long)
    for s in sorted(range(full), key=lambda m: -bin(m).count("1")):
        missing = [i for i in range(B) if not s >> i & 1]
        options_NM = torch.stack([lp_SNB[s, :, i] + value_SN[s | 1 << i] for i in missing], dim=1)
        value_SN[s], best_N = options_NM.max(dim=1)
        choice_SN[s] = torch.tensor(missing)[best_N]
    step_map_NB = torch.empty(N, B, dtype=torch.long)
    for n in range(N):
        s = 0
        for step in range(B):
            i = int(choice_SN[s, n])
            step_map_NB[n, i], s = step, s | 1 << i
    return step_map_NB, value_SN[0]
