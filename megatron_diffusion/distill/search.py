"""Choose each block's reveal order for one row: candidates, left to right, random, exact.

The candidates are the greedy order of each score (``confidence``, ``margin``, ``neg_entropy``
at temperature 0) and ``k`` Gumbel-top-k orders cycling over scores x ``temperatures``; left to
right joins them. Each block keeps the one with the highest ELBO (blocks are independent given
the clean earlier blocks, ``row_model``). ``exact`` (one token per step, ``B <= 6``) also finds
the best order by dynamic programming and keeps it: the gap between the two is how close the
sampled search gets. A uniformly random order is scored as the baseline no search should lose to.
"""

from dataclasses import dataclass

import torch

from megatron_diffusion.distill.orders import (SCORES, Candidate, best_order, left_to_right,
                                                    sample_orders, trajectory_elbo)

DEFAULT_TEMPERATURES = (0.5, 1.0)


def candidate_set(k: int, temperatures=DEFAULT_TEMPERATURES) -> list[Candidate]:
    grid = [Candidate(s, t) for t in temperatures for s in SCORES]
    return [Candidate(s, 0.0) for s in SCORES] + [grid[i % len(grid)] for i in range(k)]


def labels(candidates: list[Candidate], exact: bool) -> list[str]:
    return [c.label for c in candidates] + ["left_to_right"] + (["exact"] if exact else [])


class CountingLogProb:
    """A ``logp_fn`` that counts its forwards and the row states they evaluated."""

    def __init__(self, logp_fn):
        self.logp_fn, self.calls, self.states = logp_fn, 0, 0

    def __call__(self, revealed_RNB):
        self.calls += 1
        self.states += revealed_RNB.shape[0]
        return self.logp_fn(revealed_RNB)


@dataclass
class RowOrders:
    step_map_NB: torch.Tensor
    choice_N: torch.Tensor
    elbo_selected: torch.Tensor
    elbo_left_to_right: torch.Tensor
    elbo_random: torch.Tensor
    elbo_exact: torch.Tensor
    elbo_search: torch.Tensor
    """The best of the candidates and left to right (without the exact order)."""


def _random_order(N: int, B: int, tokens_per_step: int, generator) -> torch.Tensor:
    rank_NB = torch.rand(N, B, generator=generator).argsort(dim=1).argsort(dim=1)
    return rank_NB // tokens_per_step


def search_row(x0_NB: torch.Tensor, logp_fn, candidates: list[Candidate], *, tokens_per_step: int,
               exact: bool, generator: torch.Generator) -> RowOrders:
    N, B = x0_NB.shape
    maps_KNB, elbos_KN = sample_orders(x0_NB, logp_fn, candidates, tokens_per_step=tokens_per_step,
                                       generator=generator)
    l2r_NB = left_to_right(B, tokens_per_step).expand(N, B)
    l2r_N = trajectory_elbo(l2r_NB, x0_NB, logp_fn)
    maps_KNB, elbos_KN = torch.cat([maps_KNB, l2r_NB[None]]), torch.cat([elbos_KN, l2r_N[None]])
    random_N = trajectory_elbo(_random_order(N, B, tokens_per_step, generator), x0_NB, logp_fn)
    search_N = elbos_KN.max(dim=0).values
    exact_N = torch.full((N,), float("nan"))
    if exact:
        exact_NB, exact_N = best_order(x0_NB, logp_fn)
        maps_KNB, elbos_KN = torch.cat([maps_KNB, exact_NB[None]]), torch.cat([elbos_KN, exact_N[None]])
    choice_N = elbos_KN.argmax(dim=0)
    step_map_NB = maps_KNB[choice_N, torch.arange(N)]
    return RowOrders(step_map_NB=step_map_NB, choice_N=choice_N,
                     elbo_selected=elbos_KN[choice_N, torch.arange(N)], elbo_left_to_right=l2r_N,
                     elbo_random=random_N, elbo_exact=exact_N, elbo_search=search_N)
