"""Training losses: masked-diffusion ELBO, edit-stage all-position loss, optional AR term.

Stable-DiffCoder eq. 4 / Seed Diffusion eq. 5-6 (docs/method.md 1, 5): ``L = -E[sum_i w_i log
p(x0_i | x_t)]``. The weights ``w_i`` come with the batch (``loss_weights_BL``: ``w(t)`` on masked
positions, 1 in the corruption warmup, every position in the edit stage), so the loss never needs
the schedule. ``readout.py`` says which output predicts which token (plain, logit shift, AR
objective, AR term on the clean stream); here the cross entropy at the outputs it needs is put
back in slot order and summed in that order, normalised per token (LLaDA) or per row
(``LossConfig.normalization``) as a sum and a count that megatron adds over micro-batches and
ranks before dividing. A context-parallel rank sums the slots read from its slice; CP=1 is the
whole output. docs/method.md 1, docs/cpt.md "Loss readout", docs/context_parallel.md.
"""

import torch

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.loss.readout import (Readout, Slots, readout, token_ce,
                                             vocab_parallel_argmax)


def diffusion_loss(output: torch.Tensor, batch: DiffusionBatch, cfg: LossConfig, *,
                   logit_shift: bool = False, block_size: int | None = None,
                   visibility: str = "shared", cp_rank: int = 0, cp_size: int = 1):
    """``(loss_sum, num_tokens, metrics)`` of CP rank ``cp_rank``'s slice ``output``
    (``[B, S/cp, V/tp]``; ``S = L``, or ``2L`` in block mode: noisy half first) of the model
    output; summed over the ``cp_size`` ranks they equal the unsplit loss (CP=1: the whole).

    ``block_size``/``visibility`` (attention config) place the block-mode shift; an AR term
    (``cfg.ar_loss_weight > 0``) reads the causal clean half.
    """
    num_outputs = output.shape[1] * cp_size
    ro = readout(batch, num_outputs, cfg, logit_shift=logit_shift, block_size=block_size,
                 visibility=visibility)
    n = num_outputs // cp_size
    return readout_loss(output, ro, batch, cfg, span=(cp_rank * n, (cp_rank + 1) * n),
                        counts_tokens=cp_rank == 0)


def readout_loss(output: torch.Tensor, ro: Readout, batch: DiffusionBatch, cfg: LossConfig, *,
                 span: tuple[int, int] | None = None, counts_tokens: bool = True):
    """``diffusion_loss`` for a built readout. ``output``: the logits of the outputs ``span``
    (default: all) as ``[B, stop - start, V/tp]``, or of the slice's needed outputs only
    (``[1, K, V/tp]`` row-major: the model's ``logits_at_BS``). ``counts_tokens``: whether this
    rank reports the token count (CP rank 0)."""
    start, stop = span or (0, ro.num_outputs)
    needed_BS = ro.needed(start, stop)
    if tuple(output.shape[:2]) == tuple(needed_BS.shape):
        logits_KV = output[needed_BS]  # full logits of the slice: keep the needed rows
    else:
        logits_KV = output.flatten(0, 1)  # the model computed the needed rows only
    with torch.no_grad():  # before the cross entropy, which shifts its input in place
        argmax_BS = torch.full(needed_BS.shape, -1, dtype=torch.long, device=needed_BS.device)
        argmax_BS = argmax_BS.masked_scatter(needed_BS, vocab_parallel_argmax(logits_KV.detach()))
    # one cross entropy per term: where both terms read an output (a block start's clean
    # source) each gets its own, as separate computations did (same bits); a term that reads
    # every needed row takes them without a copy
    alone = len(ro.terms) == 1
    terms = [_term(logits_KV, needed_BS, argmax_BS, t, start, stop, alone) for t in ro.terms]
    ce_BT, weights_BT, correct_BT = terms[0]
    per_pos_BT = ce_BT * weights_BT
    has_loss = weights_BT > 0
    metrics = {"ce_sum": (ce_BT.detach() * has_loss).sum(), "ce_count": has_loss.sum(),
               "correct": (correct_BT & has_loss).sum()}
    if ro.ar is not None:
        ar_ce_BT, ar_weights_BT, _ = terms[1]
        ar_BT = ar_ce_BT * ar_weights_BT
        metrics["ar_ce_sum"] = ar_BT.detach().sum()
        metrics["ar_ce_count"] = (ar_weights_BT > 0).sum()
        # weights over both halves; the count stays the eligible tokens of the noisy half
        per_pos_BT = torch.cat([per_pos_BT, cfg.ar_loss_weight * ar_BT], dim=1)
    eligible_BL = batch.loss_mask_BL
    if cfg.normalization == "token":
        loss_sum = per_pos_BT.sum()
        count = eligible_BL.sum()
    else:
        loss_sum = (per_pos_BT.sum(dim=1) / eligible_BL.sum(dim=1).clamp(min=1)).sum()
        count = batch.batch_size
    return loss_sum, torch.as_tensor(count * counts_tokens, dtype=torch.int), metrics


def _term(logits_KV, needed_BS, argmax_BS, term: Slots, start: int, stop: int, alone: bool):
    """``(ce_BT, weights_BT, correct_BT)`` of one term in slot order; zeros (and weight zero) for
    the slots read from another CP rank's slice."""
    local_BT, mine_BT = _local(term, start, stop)
    reads_BT = mine_BT & (term.weights_BT != 0)
    # slice-order layouts [B, n + 1]: the last column takes the slots of other slices
    reads_BS = _zeros(needed_BS, torch.bool).scatter_(1, local_BT, reads_BT)
    targets_BS = _zeros(needed_BS, torch.long).scatter_(1, local_BT, term.targets_BT)
    rows_KV = logits_KV if alone else logits_KV[reads_BS[:, :-1][needed_BS]]
    ce_K = token_ce(rows_KV, targets_BS[reads_BS])
    ce_BS = _zeros(needed_BS, torch.float32).masked_scatter(reads_BS, ce_K)
    correct_BT = reads_BT & (_padded(argmax_BS).gather(1, local_BT) == term.targets_BT)
    # slot-major memory ([T, B] transposed), the layout megatron's seq-first kernel gave the
    # cross entropies before: it decides the order of the sums, so the loss keeps its bits
    ce_BT = ce_BS.gather(1, local_BT).t().contiguous().t()
    return ce_BT, torch.where(mine_BT, term.weights_BT, 0.0), correct_BT


def _local(term: Slots, start: int, stop: int):
    """``(index_BT, mine_BT)``: the slots' sources in slice coordinates (``stop - start``, the
    padding column, for a source in another slice), and which are in the slice."""
    mine_BT = (term.source_BT >= start) & (term.source_BT < stop)
    return torch.where(mine_BT, term.source_BT - start, stop - start), mine_BT


def _zeros(like_BS: torch.Tensor, dtype) -> torch.Tensor:
    return torch.zeros(like_BS.shape[0], like_BS.shape[1] + 1, dtype=dtype, device=like_BS.device)


def _padded(x_BS: torch.Tensor) -> torch.Tensor:
    return torch.cat([x_BS, x_BS.new_zeros(x_BS.shape[0], 1)], dim=1)
