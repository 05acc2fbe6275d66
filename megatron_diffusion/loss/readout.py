"""The loss readout: which model output predicts which token, with which weight (docs/method.md 1,
3, 10; docs/cpt.md "Loss readout").

A *slot* per target token holds the output position that predicts it (``source_BT``), the token
and its weight. Plain diffusion: output ``j`` predicts ``x0_j``. ``objective='ar'`` and the logit
shift: ``shift_sources`` (output ``j - 1``; in block mode a block's first token is read from the
clean stream). The AR term on a causal clean stream is a second set of slots (clean output
``L + j - 1`` predicts ``x0_j``). ``needed`` is the set of output positions some weighted slot
reads: the LM head runs only there (``model/gpt.py``), and ``loss/elbo.py`` computes one cross
entropy per needed position and term, puts it back in slot order and sums. A context-parallel
rank reads the slots whose source lies in its slice ``[start, stop)``; CP=1 is ``[0, S)``.
"""

from dataclasses import dataclass

import torch
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.layout import block_ids
from megatron_diffusion.loss.config import LossConfig


def token_ce(logits_KV: torch.Tensor, targets_K: torch.Tensor) -> torch.Tensor:
    """``[K]`` cross entropy of vocabulary-parallel logits ``[K, V/tp]`` (in float32).

    megatron's kernel subtracts the row maxima from its input in place: pass rows nothing
    else reads afterwards (a float32 input is not copied)."""
    return vocab_parallel_cross_entropy(logits_KV.float()[:, None], targets_K[:, None])[:, 0]


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


@dataclass(frozen=True)
class Slots:
    """One loss term's targets, ``[B, T]``: slot ``k`` reads output ``source_BT[:, k]``."""

    source_BT: torch.Tensor
    targets_BT: torch.Tensor
    weights_BT: torch.Tensor

    def at_outputs(self, values_BT: torch.Tensor, num_outputs: int) -> torch.Tensor:
        """``values_BT`` moved to the output positions their slots read (``[B, S]``, zeros
        elsewhere; the sources of one term are distinct)."""
        out_BS = values_BT.new_zeros(values_BT.shape[0], num_outputs)
        return out_BS.scatter_(1, self.source_BT, values_BT)


@dataclass(frozen=True)
class Readout:
    """The slots of a micro-batch over a model output of ``num_outputs`` positions."""

    num_outputs: int
    first_target: int
    """Slot ``k`` targets token ``k + first_target`` (1 under the shift and ``objective='ar'``)."""
    main: Slots
    ar: Slots | None
    """The AR term on the clean stream (``loss.ar_loss_weight > 0``), else None."""

    @property
    def terms(self) -> list[Slots]:
        return [self.main] if self.ar is None else [self.main, self.ar]

    def needed(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Bool ``[B, stop - start]``: the outputs of the slice that some weighted slot reads."""
        needed_BS = torch.zeros(self.main.source_BT.shape[0], self.num_outputs, dtype=torch.bool,
                                device=self.main.source_BT.device)
        for term in self.terms:
            needed_BS |= term.at_outputs(term.weights_BT != 0, self.num_outputs)
        return needed_BS[:, start:stop]


def readout(batch: DiffusionBatch, num_outputs: int, cfg: LossConfig, *,
            logit_shift: bool = False, block_size: int | None = None,
            visibility: str = "shared") -> Readout:
    """The slots of ``batch`` for a model output of ``num_outputs`` positions (``L``, or ``2L`` in
    block mode: noisy half first). ``block_size``/``visibility`` (the run's attention config,
    checked by ``RunConfig.validate``) place the block-mode shift."""
    B, L = batch.batch_size, batch.seq_len
    labels_BL, eligible_BL = batch.labels_BL, batch.loss_mask_BL
    next_BT = torch.arange(L - 1, device=labels_BL.device).expand(B, L - 1)
    if cfg.objective == "ar":
        main = Slots(next_BT, labels_BL[:, 1:], eligible_BL[:, 1:].float())
    elif logit_shift:
        blocks_BL = None
        if num_outputs == 2 * L:
            blocks_BL = block_ids(batch.document_ids_BL, block_size, visibility)
        main = Slots(shift_sources(B, L, blocks_BL, labels_BL.device), labels_BL[:, 1:],
                     batch.loss_weights_BL[:, 1:])
    else:
        every_BT = torch.arange(L, device=labels_BL.device).expand(B, L)
        main = Slots(every_BT, labels_BL, batch.loss_weights_BL)
    ar = None
    if cfg.ar_loss_weight > 0:
        ar = Slots(next_BT + L, labels_BL[:, 1:], eligible_BL[:, 1:].float())
    first = 1 if cfg.objective == "ar" or logit_shift else 0
    return Readout(num_outputs, first, main, ar)
