"""Commit rules of one denoising step inside a block (docs/method.md 8; Seed Diffusion 3.4).

``propose`` turns the logits of the block into a token and a confidence (its probability under
the untempered softmax) per position; a rule picks which masked positions become final:
``fixed`` (LLaDA/SDAR) commits ``ceil(masked left / steps left)`` positions, the most confident
first; ``threshold`` (Fast-dLLM) commits every position at least ``threshold`` confident, and
always the most confident one. ``select_correction`` is self-correction's rule (edit-trained
models, Seed Diffusion 3.1/3.4): at most one committed token per row is replaced, where the
model's top-1 differs with probability >= ``correction_threshold``. docs/sampling.md has the
rules as commands use them.

Everything is batched over rows ``B`` and block positions ``N``; ``V`` is the vocabulary.
"""

import torch


def propose(logits_BNV: torch.Tensor, temperature: float,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens_BN, confidence_BN, top1_BN, top1_prob_BN)`` from full-vocabulary logits."""
    probs_BNV = torch.softmax(logits_BNV.float(), dim=-1)
    top1_prob_BN, top1_BN = probs_BNV.max(dim=-1)
    if temperature == 0:
        return top1_BN, top1_prob_BN, top1_BN, top1_prob_BN
    tempered_BNV = torch.softmax(logits_BNV.float() / temperature, dim=-1)
    B, N, V = tempered_BNV.shape
    tokens_BN = torch.multinomial(tempered_BNV.reshape(B * N, V), 1, generator=generator).view(B, N)
    confidence_BN = probs_BNV.gather(-1, tokens_BN[..., None])[..., 0]
    return tokens_BN, confidence_BN, top1_BN, top1_prob_BN


def _rank_among_masked(masked_BN: torch.Tensor, confidence_BN: torch.Tensor) -> torch.Tensor:
    """0 for the most confident masked position of each row, 1 for the next, ...; unmasked
    positions rank after all masked ones. Ties go to the leftmost position."""
    score_BN = torch.where(masked_BN, confidence_BN, torch.full_like(confidence_BN, -1.0))
    order_BN = torch.sort(score_BN, dim=-1, descending=True, stable=True).indices
    return torch.argsort(order_BN, dim=-1)


def select_fixed(masked_BN: torch.Tensor, confidence_BN: torch.Tensor,
                 steps_left) -> torch.Tensor:
    """Commit ``ceil(masked_left / steps_left)`` most confident masked positions per row
    (``steps_left``: an int or one per row)."""
    # self-correction can run steps past the planned ones
    steps_left_B = torch.as_tensor(steps_left, device=masked_BN.device).clamp(min=1)
    remaining_B = masked_BN.sum(dim=-1)
    num_B = (remaining_B + steps_left_B - 1) // steps_left_B
    return masked_BN & (_rank_among_masked(masked_BN, confidence_BN) < num_B[:, None])


def select_threshold(masked_BN: torch.Tensor, confidence_BN: torch.Tensor,
                     threshold: float) -> torch.Tensor:
    """Commit masked positions with confidence >= ``threshold``; at least the best one per row."""
    best_BN = _rank_among_masked(masked_BN, confidence_BN) == 0
    return masked_BN & ((confidence_BN >= threshold) | best_BN)


def select_correction(committed_BN: torch.Tensor, current_BN: torch.Tensor, top1_BN: torch.Tensor,
                      top1_prob_BN: torch.Tensor, threshold: float,
                      allowed_B: torch.Tensor) -> torch.Tensor:
    """At most one position per row (where ``allowed_B``) to overwrite with ``top1_BN``: the most
    confident committed position whose top-1 differs with probability >= ``threshold``."""
    candidate_BN = committed_BN & (top1_BN != current_BN) & (top1_prob_BN >= threshold)
    candidate_BN &= allowed_B[:, None]
    return candidate_BN & (_rank_among_masked(candidate_BN, top1_prob_BN) == 0)


def token_probability(logits_BNV: torch.Tensor, tokens_BN: torch.Tensor) -> torch.Tensor:
    """Probability of ``tokens_BN`` under the (untempered) softmax of ``logits_BNV``."""
    probs_BNV = torch.softmax(logits_BNV.float(), dim=-1)
    return probs_BNV.gather(-1, tokens_BN[..., None])[..., 0]
