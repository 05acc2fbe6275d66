"""Reveal orders of one block: step maps, their ELBO, candidate orders and the exact best order.

Seed Diffusion 3.2 (docs/method.md 6) distils trajectories whose tokens are the data's and whose
*order* is searched. A block of ``B`` positions is decoded in steps; its trajectory is a
``step_map``: ``step_map[i]`` is the step (from 0) at which position ``i`` is revealed, several
positions may share a step, and the steps used are ``0 .. S-1`` with none skipped. Before step
``k`` the positions with ``step_map < k`` hold their data tokens ``x0`` and the rest ``[MASK]``.

The model is seen through one function, ``logp_fn(revealed_RB) -> logp_RBV``: for ``R`` states of
the block (``True`` = revealed) the log-probabilities over the vocabulary at every position, from
one forward. Everything here is plain torch on such a function, so a stub makes it hand-checkable.

* ``trajectory_elbo``: ``sum_k sum_{i: step_map[i] = k} log p(x0_i | x_k)``, the ELBO of eq. 7-8
  for that order (one forward per step, batched).
* ``sample_order``: a candidate from the model, as the paper's implementable reading describes:
  at each step the masked positions are scored (``confidence`` = top-1 probability, ``margin`` =
  top-1 minus top-2, ``neg_entropy``), Gumbel noise at ``temperature`` is added and the top
  ``tokens_per_step`` are revealed with their data tokens; its ELBO comes from the same forwards.
  ``temperature = 0`` with ``confidence`` is the greedy order.
* ``left_to_right``: ``tokens_per_step`` positions per step in order.
* ``best_order``: for ``B <= 6`` the exact best one-token-per-step order by dynamic programming over
  the ``2^B`` revealed subsets (one batched forward of all of them), to measure how close the
  sampled candidates get.
"""

from collections.abc import Callable

import torch

LogProbFn = Callable[[torch.Tensor], torch.Tensor]
SCORES = ("confidence", "margin", "neg_entropy")
MAX_EXACT_BLOCK = 6


def check_step_map(step_map_B: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every position has a step and the steps are 0..S-1."""
    if step_map_B.dim() != 1 or step_map_B.numel() == 0:
        raise ValueError(f"step_map: expected a non-empty 1-d tensor, got shape {tuple(step_map_B.shape)}")
    used = sorted(set(step_map_B.tolist()))
    if used != list(range(len(used))):
        raise ValueError(f"step_map: steps must be 0..S-1 with none skipped, got {used}")


def states(step_map_B: torch.Tensor) -> torch.Tensor:
    """``[S, B]`` bool: the revealed positions before each step."""
    steps_S = torch.arange(int(step_map_B.max()) + 1)
    return step_map_B.unsqueeze(0) < steps_S.unsqueeze(1)


def _data_logp(logp_RBV: torch.Tensor, x0_B: torch.Tensor) -> torch.Tensor:
    """``[R, B]``: log p(x0_i | state r)."""
    return logp_RBV.gather(-1, x0_B.expand(logp_RBV.shape[0], -1).unsqueeze(-1)).squeeze(-1)


def trajectory_elbo(step_map_B: torch.Tensor, x0_B: torch.Tensor, logp_fn: LogProbFn) -> float:
    """The ELBO of revealing ``x0`` in the order ``step_map`` (one forward per step, batched)."""
    check_step_map(step_map_B)
    before_SB = states(step_map_B)
    lp_SB = _data_logp(logp_fn(before_SB), x0_B)
    revealed_at_SB = step_map_B.unsqueeze(0) == torch.arange(before_SB.shape[0]).unsqueeze(1)
    return float((lp_SB * revealed_at_SB).sum())


def position_scores(logp_BV: torch.Tensor, score: str) -> torch.Tensor:
    """How sure the model is at each position (higher = reveal earlier)."""
    if score == "confidence":
        return logp_BV.max(dim=-1).values.exp()
    if score == "margin":
        top2 = logp_BV.topk(2, dim=-1).values.exp()
        return top2[:, 0] - top2[:, 1]
    if score == "neg_entropy":
        return (logp_BV.exp() * logp_BV).sum(dim=-1)
    raise ValueError(f"score: got {score!r}, expected one of {SCORES}")


def sample_order(x0_B: torch.Tensor, logp_fn: LogProbFn, *, score: str = "confidence",
                 temperature: float = 0.0, tokens_per_step: int = 1,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """One candidate order from the model: ``(step_map, elbo)`` (one forward per step)."""
    B = x0_B.numel()
    revealed_B = torch.zeros(B, dtype=torch.bool)
    step_map_B = torch.full((B,), -1, dtype=torch.long)
    elbo, step = 0.0, 0
    while not revealed_B.all():
        logp_BV = logp_fn(revealed_B.unsqueeze(0))[0]
        keys_B = position_scores(logp_BV, score)
        if temperature > 0:
            uniform = torch.rand(B, generator=generator).clamp_min(1e-20)
            keys_B = keys_B + temperature * -torch.log(-torch.log(uniform))
        keys_B = keys_B.masked_fill(revealed_B, float("-inf"))
        k = min(tokens_per_step, int((~revealed_B).sum()))
        chosen = keys_B.topk(k).indices
        elbo += float(_data_logp(logp_BV.unsqueeze(0), x0_B)[0, chosen].sum())
        revealed_B[chosen] = True
        step_map_B[chosen] = step
        step += 1
    return step_map_B, elbo


def left_to_right(block_size: int, tokens_per_step: int = 1) -> torch.Tensor:
    """The step map of revealing ``tokens_per_step`` positions per step, left to right."""
    return torch.arange(block_size) // tokens_per_step


def best_order(x0_B: torch.Tensor, logp_fn: LogProbFn) -> tuple[torch.Tensor, float]:
    """The exact best one-token-per-step order and its ELBO (dynamic programming, 2^B states)."""
    B = x0_B.numel()
    if B > MAX_EXACT_BLOCK:
        raise ValueError(f"best_order: block of {B} positions, the exact search takes at most {MAX_EXACT_BLOCK}")
    n = 1 << B
    bits_B = 1 << torch.arange(B)
    revealed_NB = (torch.arange(n).unsqueeze(1) & bits_B) > 0
    lp_NB = _data_logp(logp_fn(revealed_NB), x0_B).tolist()
    value, choice = [0.0] * n, [-1] * n  # value[s]: best ELBO of revealing what s lacks
    for s in sorted(range(n - 1), key=lambda m: -bin(m).count("1")):
        options = [(lp_NB[s][i] + value[s | (1 << i)], i) for i in range(B) if not s >> i & 1]
        value[s], choice[s] = max(options)
    step_map_B, s = torch.empty(B, dtype=torch.long), 0
    for step in range(B):
        step_map_B[choice[s]] = step
        s |= 1 << choice[s]
    return step_map_B, value[0]
