"""The commit rule's choice of positions in ``log pi(tau)``, plain torch.

At a step the sampler draws a token at every masked position of the block (temperature 1; the
draw's *confidence* is its probability) and the rule picks which draws to keep
(``sampling/strategies.py``):

* ``threshold``: every draw with confidence ``>= threshold``; when none reaches it (a
  *fallback* step), the most confident draw alone, ties to the leftmost position;
* ``fixed``: the ``n`` most confident draws, ties to the leftmost position.

The draws are independent across positions, so the probability of a step is the product of the
kept tokens' probabilities and, per position left open ``o``, the probability that its draw was
not kept: ``q_o = sum_v p_o(v) 1[p_o(v) < lt_o] 1[p_o(v) <= le_o]``, where

* threshold, a step that kept a draw at or above the threshold: ``lt_o = threshold``,
  ``le_o = inf``;
* a fallback step and the fixed rule: ``o``'s draw ranked after every kept one. A kept draw at
  ``p > o`` (right of ``o``) with confidence ``c_p`` needs ``p_o(v) < c_p`` (a tie would have
  gone to ``o``), one at ``p < o`` needs ``p_o(v) <= c_p``: ``lt_o`` / ``le_o`` are the least
  kept confidence right / left of ``o`` in its block (``inf`` where there is none). In a fallback
  step the kept confidence ``c* < threshold``, so ``q_o`` also has ``p_o(v) < threshold``.

The sets ``{v : p_o(v) < c}`` change only where a probability crosses a cutoff (measure zero),
so the cutoffs are constants of the gradient (detached) and ``grad log q_o`` flows through the
probabilities summed. Exact for the rule the sampler runs, up to: the confidences are the
trained model's at the loss forward, equal to the sampler's up to float differences (a kept
confidence within float error of the threshold may be read as a fallback), and the stop
token's block (``rows.py``).
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
