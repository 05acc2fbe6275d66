"""The commit rule's choice of positions in ``log pi(tau)``, plain torch.

At a step the sampler draws a token at every masked position of the block and the rule keeps
some (``sampling/strategies.py``): ``threshold`` every draw at least ``threshold`` confident, or
in a *fallback* step the most confident alone; ``fixed`` the ``n`` most confident; ties to the
leftmost. The draws are independent, so a step's probability is the product of the kept tokens'
probabilities and, per position ``o`` left open, the probability its draw was not kept:
``q_o = sum_v p_o(v) 1[p_o(v) < lt_o] 1[p_o(v) <= le_o]``, with ``lt_o``/``le_o`` the threshold
or the least kept confidence right/left of ``o`` (the tie rule). The cutoffs are constants of
the gradient (the sets change only on a measure-zero crossing), so ``grad log q_o`` flows through
the probabilities summed. Exact for the rule the sampler runs, up to float differences between
the sampler's and the loss forward's confidences, and the stop token's block (``rows.py``).
docs/onpolicy.md "Objective" derives the cutoffs.
"""

from dataclasses import dataclass

import torch

RULES = ("threshold", "fixed")


@dataclass(frozen=True)
class CommitRule:
    """The sampler's commit rule of the trajectories (``onpolicy.strategy``/``threshold``)."""

    strategy: str
    threshold: float = 0.9


def open_cutoffs(conf_K: torch.Tensor, group_K: torch.Tensor, pos_K: torch.Tensor,
                 group_O: torch.Tensor, pos_O: torch.Tensor,
                 rule: CommitRule) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lt_O, le_O)`` of the module docstring for the open positions ``O``.

    ``conf_K``: the kept draws' confidences; ``group_K``/``group_O``: the block state each kept
    draw / open position belongs to (one id per row and block); ``pos_K``/``pos_O``: their
    positions (any increasing numbering inside a block)."""
    conf_K = conf_K.detach().double()
    same_OK = group_O[:, None] == group_K[None, :]
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=conf_K.device)
    right_O = torch.where(same_OK & (pos_K[None, :] > pos_O[:, None]), conf_K[None, :], inf).min(1).values
    left_O = torch.where(same_OK & (pos_K[None, :] < pos_O[:, None]), conf_K[None, :], inf).min(1).values
    if rule.strategy == "fixed":
        return right_O, left_O
    kept_O = same_OK.sum(1)
    best_O = torch.where(same_OK, conf_K[None, :], -inf).max(1).values
    fallback_O = (kept_O == 1) & (best_O < rule.threshold)
    thr_O = torch.full_like(right_O, rule.threshold)
    return torch.where(fallback_O, right_O, thr_O), torch.where(fallback_O, left_O, inf.expand_as(left_O))
