"""Training losses: masked-diffusion ELBO, edit-stage all-position loss, optional AR loss.

Stable-DiffCoder eq. 4 / Seed Diffusion eq. 5-6 (docs/method.md 1, 5):

    L = -E[ sum_i w_i * log p(x0_i | x_t) ]

The per-position weights ``w_i`` come with the batch (``loss_weights_BL``, filled by the
corruption in the loader): ``w(t)`` on masked positions in the mask stage (``1`` during the
corruption warmup), and a weight on every position in the edit stage. This module only applies
them, so the loss never needs to know the schedule.

Normalisation (``LossConfig.normalization``):

* ``token`` (LLaDA style, default): the weighted sum over the whole global batch divided by the
  number of loss-eligible tokens in it (``loss_mask_BL``: every non-prompt position, masked or
  not), i.e. an unbiased per-token ELBO estimate. The sum and the count are returned separately
  and megatron's schedule (``calculate_per_token_loss=True``) adds both over micro-batches,
  pipeline stages and data-parallel ranks before dividing, so the result does not depend on how
  the batch is split.
* ``sequence``: each row is normalised by its own eligible-token count, then rows are averaged
  (the count returned is the number of rows).

Logits are vocabulary-parallel (``[b, s, V/tp]``); cross entropy is megatron's
``vocab_parallel_cross_entropy``, so tensor parallelism needs no gather. ``objective='ar'`` is
plain next-token training of the same model (the AR baseline).

Logit shift (``model.logit_shift``; a converted AR checkpoint's convention). The target ``x0_j``
is read from the output at ``shift_sources(...)[:, j - 1]`` (``shift_sources`` is the one
definition, the sampler decodes with the same one); the first token of a row has no loss:

* ``causal`` / ``bidirectional``: the output at ``j - 1`` predicts token ``j``;
* ``block`` (Fast-dLLM v2 "token shift"): inside block ``b`` the noisy output at ``j - 1``
  predicts token ``j``; the block's first token ``s_b`` is predicted from the *clean* stream's
  output at ``s_b - 1`` (index ``L + s_b - 1`` of the ``x_t (+) x0`` input: the last clean
  position of the previous block, which sees exactly the context ``x0_{<s_b}``). Reading it from
  the previous noisy block instead would predict a token from a position that never sees the
  block's context.

The targets' weights stay with the targets (``loss_weights_BL[:, 1:]``), so the edit stage's
all-position loss and the accuracy are computed over the same shifted pairs. Under the shift
an edit-stage visible token ``j`` is predicted by ``j - 1``, which sees ``x_t^j`` inside the
block: the loss then teaches to keep or correct it, as without shift.
"""

import torch
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.errors import UsageError
from megatron_diffusion.loss.config import LossConfig


def _token_ce(logits_BSV: torch.Tensor, targets_BS: torch.Tensor) -> torch.Tensor:
    # megatron's kernel wants seq-first logits; it returns per-token losses in the target shape
    ce_SB = vocab_parallel_cross_entropy(logits_BSV.transpose(0, 1).contiguous().float(),
                                         targets_BS.transpose(0, 1).contiguous())
    return ce_SB.transpose(0, 1)


def vocab_parallel_argmax(logits_BLV: torch.Tensor) -> torch.Tensor:
    """Argmax over the full vocabulary of tensor-parallel vocabulary shards (lowest id on ties)."""
    from megatron.core import parallel_state as ps

    local_max, local_idx = logits_BLV.max(dim=-1)
    if not ps.model_parallel_is_initialized() or ps.get_tensor_model_parallel_world_size() == 1:
        return local_idx
    import torch.distributed as dist

    group = ps.get_tensor_model_parallel_group()
    global_idx = local_idx + ps.get_tensor_model_parallel_rank() * logits_BLV.shape[-1]
    best = local_max.clone()
    dist.all_reduce(best, op=dist.ReduceOp.MAX, group=group)
    cand = torch.where(local_max == best, global_idx, torch.full_like(global_idx, 2**62))
    dist.all_reduce(cand, op=dist.ReduceOp.MIN, group=group)
    return cand


def shift_sources(batch_size: int, seq_len: int, blocks_BL: torch.Tensor | None = None,
                  device=None) -> torch.Tensor:
    """``[B, L - 1]`` output index predicting token ``j = 1 .. L-1`` under the logit shift.

    Without blocks: ``j - 1``. With ``blocks_BL`` (block ids, ``layout.block_ids``; the output
    covers ``x_t (+) x0``): ``j - 1`` when ``j - 1`` is in ``j``'s block, else ``L + j - 1``
    (the clean stream's last position before the block).
    """
    L = seq_len
    prev_K = torch.arange(L - 1, device=device)
    src_BK = prev_K.expand(batch_size, L - 1)
    if blocks_BL is None:
        return src_BK.clone()
    block_start_BK = blocks_BL[:, 1:] != blocks_BL[:, :-1]
    return torch.where(block_start_BK, src_BK + L, src_BK)


def _shifted(logits_BSV: torch.Tensor, batch: DiffusionBatch, blocks_BL):
    """Outputs gathered so position ``k`` predicts target ``k + 1``: ``[B, L - 1, V/tp]``.
    Gathers along the sequence only, so each TP rank gathers its own vocabulary shard."""
    src_BK = shift_sources(batch.batch_size, batch.seq_len, blocks_BL, logits_BSV.device)
    if blocks_BL is None:
        return logits_BSV[:, :batch.seq_len - 1]
    index_BKV = src_BK.unsqueeze(-1).expand(-1, -1, logits_BSV.shape[-1])
    return logits_BSV.gather(1, index_BKV)


def _block_ids_for(logits_BSV, batch, block_size, visibility):
    """Block ids of the row in block mode (output of length 2L), else None."""
    if logits_BSV.shape[1] != 2 * batch.seq_len:
        return None
    if block_size is None:
        raise UsageError("model.logit_shift: the block-mode shift needs attention.block_size")
    from megatron_diffusion.layout import block_ids

    return block_ids(batch.document_ids_BL, block_size, visibility)


def diffusion_loss(logits_BSV: torch.Tensor, batch: DiffusionBatch, cfg: LossConfig, *,
                   logit_shift: bool = False, block_size: int | None = None,
                   visibility: str = "shared"):
    """Return ``(loss_sum, num_tokens, metrics)``; the caller divides the summed parts.

    ``logits_BSV`` covers the model input (``S = L``, or ``2L`` in block mode: noisy half first).
    ``block_size``/``visibility`` (attention config) place the block-mode shift. An AR term
    (``cfg.ar_loss_weight > 0``) reads the clean half, so it needs block mode with a causal clean
    stream (``RunConfig.validate`` checks that once).
    """
    L = batch.seq_len
    labels_BL = batch.labels_BL
    eligible_BL = batch.loss_mask_BL
    if cfg.objective == "ar":
        logits_BLV = logits_BSV[:, :L - 1]
        weights_BL = eligible_BL[:, 1:].float()
        targets_BL = labels_BL[:, 1:]
    elif logit_shift:
        blocks_BL = _block_ids_for(logits_BSV, batch, block_size, visibility)
        logits_BLV = _shifted(logits_BSV, batch, blocks_BL)
        weights_BL = batch.loss_weights_BL[:, 1:]
        targets_BL = labels_BL[:, 1:]
    else:
        logits_BLV = logits_BSV[:, :L]
        weights_BL = batch.loss_weights_BL
        targets_BL = labels_BL
    ce_BL = _token_ce(logits_BLV, targets_BL)
    per_pos_BL = ce_BL * weights_BL
    has_loss = weights_BL > 0
    with torch.no_grad():
        correct = (vocab_parallel_argmax(logits_BLV.detach()) == targets_BL) & has_loss
    metrics = {
        "ce_sum": (ce_BL.detach() * has_loss).sum(),
        "ce_count": has_loss.sum(),
        "correct": correct.sum(),
    }
    if cfg.ar_loss_weight > 0:
        ar_ce_BL = _token_ce(logits_BSV[:, L:2 * L - 1], labels_BL[:, 1:])
        ar_BL = ar_ce_BL * eligible_BL[:, 1:].float()
        metrics["ar_ce_sum"] = ar_BL.detach().sum()
        metrics["ar_ce_count"] = eligible_BL[:, 1:].sum()
        per_pos_BL = torch.cat([per_pos_BL, cfg.ar_loss_weight * ar_BL], dim=1)
        # weights over both halves; count stays the eligible tokens of the noisy half
    if cfg.normalization == "token":
        loss_sum = per_pos_BL.sum()
        num_tokens = eligible_BL.sum().to(torch.int)
    else:
        per_row = per_pos_BL.sum(dim=1) / eligible_BL.sum(dim=1).clamp(min=1)
        loss_sum = per_row.sum()
        num_tokens = torch.tensor(per_row.shape[0], dtype=torch.int)
    return loss_sum, num_tokens, metrics
