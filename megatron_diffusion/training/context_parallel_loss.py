"""The diffusion loss on a context-parallel rank's slice of the model output.

Under context parallelism (``parallel/context_parallel.py``) CP rank ``r`` holds the output of
model tokens ``[start, stop)`` of the row's ``S`` (``S = L``, or ``2L`` for ``x_t (+) x0``), so the
targets of ``loss/elbo.py`` are re-read per *output position*: every position predicts at most one
token of the row, so targets and weights can be laid out over the whole ``S`` from the global
batch (every CP rank reads the same micro-batch) and each rank sums over its own slice:

* no shift: position ``p < L`` (noisy half) predicts ``x0_p`` with weight ``loss_weights_p``;
* logit shift: the output ``shift_sources(...)[:, j - 1]`` predicts ``x0_j`` (``loss/elbo.py``'s one
  definition: ``j - 1``, or in block mode the clean stream's ``L + s_b - 1`` for a block start
  ``s_b``), so a target whose source sits in another rank's slice is that rank's term;
* ``objective='ar'``: position ``p < L - 1`` predicts ``x0_{p+1}``;
* ``ar_loss_weight``: the clean position ``L + p`` predicts ``x0_{p+1}`` (the same token the
  shift reads there, so one cross entropy per position serves both terms).

The loss sum, the cross-entropy/accuracy metrics and the gradients then add over CP ranks exactly
as over data-parallel ranks (megatron's schedule and ``finalize_model_grads`` reduce sums and
counts over the data x context-parallel group). The token count (eligible tokens, or rows under
``sequence`` normalisation, whose per-row denominators come from the global row) is reported by
CP rank 0 alone, so it is counted once.
"""

import torch

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.errors import UsageError
from megatron_diffusion.layout import block_ids
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.loss.elbo import (_token_ce, diffusion_loss, shift_sources,
                                          vocab_parallel_argmax)
from megatron_diffusion.parallel import context_parallel


def output_targets(batch: DiffusionBatch, S: int, cfg: LossConfig, *, logit_shift: bool,
                   block_size: int | None, visibility: str):
    """``(targets_BS, weights_BS, ar_weights_BS)`` over the whole model output of length ``S``:
    the token each output position predicts, its loss weight, and its weight in the extra AR
    term on the clean stream (zeros without it)."""
    B, L = batch.batch_size, batch.seq_len
    labels, dev = batch.labels_BL, batch.labels_BL.device
    targets = labels[:, :1].expand(B, S).clone()  # a real token where nothing is predicted
    weights = torch.zeros(B, S, dtype=torch.float32, device=dev)
    if cfg.objective == "ar":
        targets[:, :L - 1], weights[:, :L - 1] = labels[:, 1:], batch.loss_mask_BL[:, 1:].float()
    elif logit_shift:
        blocks = None
        if S == 2 * L:
            if block_size is None:
                raise UsageError("model.logit_shift: the block-mode shift needs "
                                 "attention.block_size")
            blocks = block_ids(batch.document_ids_BL, block_size, visibility)
        src_BK = shift_sources(B, L, blocks, dev)
        targets.scatter_(1, src_BK, labels[:, 1:])
        weights.scatter_(1, src_BK, batch.loss_weights_BL[:, 1:].float())
    else:
        targets[:, :L], weights[:, :L] = labels, batch.loss_weights_BL.float()
    ar_weights = torch.zeros_like(weights)
    if cfg.ar_loss_weight > 0:
        targets[:, L:2 * L - 1] = labels[:, 1:]
        ar_weights[:, L:2 * L - 1] = batch.loss_mask_BL[:, 1:].float()
    return targets, weights, ar_weights


def context_parallel_diffusion_loss(local_BSV: torch.Tensor, batch: DiffusionBatch,
                                    cfg: LossConfig, *, logit_shift: bool = False,
                                    block_size: int | None = None, visibility: str = "shared",
                                    cp_rank: int = 0, cp_size: int = 1):
    """``diffusion_loss``'s ``(loss_sum, num_tokens, metrics)`` for CP rank ``cp_rank``'s slice
    ``local_BSV`` of the output; summed over the ``cp_size`` ranks they equal the unsplit loss."""
    S = local_BSV.shape[1] * cp_size
    start, stop = context_parallel.local_span(S, cp_rank, cp_size)
    full = output_targets(batch, S, cfg, logit_shift=logit_shift, block_size=block_size,
                          visibility=visibility)
    # only positions with a target pay for a cross entropy (block mode without shift: the noisy
    # half), so the fp32 logits of the loss shrink with CP like everything else. None at all (the
    # clean half at CP=2) still gives a loss in the graph: the exchanges' backward needs every rank
    cols = ((full[1] > 0) | (full[2] > 0))[:, start:stop].any(dim=0).nonzero().squeeze(1)
    local_BSV = local_BSV.index_select(1, cols)
    targets, weights, ar_weights = (t[:, start:stop].index_select(1, cols) for t in full)
    ce_BS = _token_ce(local_BSV, targets)
    has_loss = weights > 0
    with torch.no_grad():
        correct = (vocab_parallel_argmax(local_BSV.detach()) == targets) & has_loss
    metrics = {"ce_sum": (ce_BS.detach() * has_loss).sum(), "ce_count": has_loss.sum(),
               "correct": correct.sum()}
    per_pos_BS = ce_BS * weights
    if cfg.ar_loss_weight > 0:
        metrics["ar_ce_sum"] = (ce_BS.detach() * ar_weights).sum()
        metrics["ar_ce_count"] = (ar_weights > 0).sum()
        per_pos_BS = per_pos_BS + cfg.ar_loss_weight * ce_BS * ar_weights
    eligible_BL = batch.loss_mask_BL
    if cfg.normalization == "token":
        loss_sum = per_pos_BS.sum()
    else:
        loss_sum = (per_pos_BS.sum(dim=1) / eligible_BL.sum(dim=1).clamp(min=1)).sum()
    return loss_sum, _num_tokens(batch, cfg, cp_rank), metrics


def _num_tokens(batch: DiffusionBatch, cfg: LossConfig, cp_rank: int) -> torch.Tensor:
    """``diffusion_loss``'s count (eligible tokens, or rows), on CP rank 0 only."""
    n = batch.loss_mask_BL.sum() if cfg.normalization == "token" else batch.batch_size
    return torch.as_tensor(n * (cp_rank == 0), dtype=torch.int)


def rank_diffusion_loss(output_BSV: torch.Tensor, batch: DiffusionBatch, cfg: LossConfig,
                        **kwargs):
    """The loss of this rank's output: ``loss.diffusion_loss`` without CP, else the CP slice's."""
    cp = context_parallel.world_size()
    if cp == 1:
        return diffusion_loss(output_BSV, batch, cfg, **kwargs)
    return context_parallel_diffusion_loss(output_BSV, batch, cfg, cp_rank=context_parallel.rank(),
                                           cp_size=cp, **kwargs)
