"""The policy-gradient loss through megatron's forward/backward (``objective``'s loss on rows).

On rows from ``rows.policy_rows`` (each committed token marked once, weighted by its
trajectory's advantage) the loss reads each committed token's log-probability where training
reads its prediction (``loss.readout``), and the frozen reference's (``reference_logp``):

    loss = scale * ( -sum_i A_i log pi(x_i) - sum_o A_o log q_o
                     + kl_weight * sum_i k3(ref_i - log pi(x_i)) )

``i`` the committed tokens, ``o`` the positions a state left open with ``q_o`` the probability
that the sampler's draw there was not kept (``choice.py``; ``onpolicy.commit_choice: false``
leaves it out), ``k3`` the per-token KL estimator, ``scale = M / T`` so megatron's per-token
normalisation leaves the loss over the step's committed tokens. docs/onpolicy.md, "Objective".
"""

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.loss.readout import readout, token_ce
from megatron_diffusion.model.inputs import forward_kwargs
from megatron_diffusion.onpolicy.choice import CommitRule, open_cutoffs
from megatron_diffusion.onpolicy.objective import policy_gradient_sum
from megatron_diffusion.training.forward_backward import ForwardSpec, reduce_reports, run_schedule

REPORT = ("loss", "logp", "kl", "tokens", "open_logq", "open")


@dataclass
class PolicyBatch:
    """A micro-batch of policy rows and what its loss needs besides them."""

    batch: DiffusionBatch
    open_BL: torch.Tensor
    """``rows.PolicyRows.open_BL``: masked positions a state left open."""
    ref_logp_K: torch.Tensor
    """The reference model's log-probability of each committed token (``committed`` order)."""
    scale: float
    """``M / T`` of the step (module docstring)."""

    @property
    def tokens_BS(self) -> torch.Tensor:  # the schedule reads the shapes from here
        return self.batch.tokens_BS

    @property
    def stage(self) -> str:
        return self.batch.stage

    def to(self, device) -> "PolicyBatch":
        return PolicyBatch(self.batch.to(device), self.open_BL.to(device), self.ref_logp_K.to(device),
                           self.scale)


def _read(output_BSV: torch.Tensor, batch: DiffusionBatch, spec: ForwardSpec, where_BL):
    """``(logits_KV, targets_K, advantage_K, row_K, position_K)`` at the outputs that predict
    ``where_BL``'s positions (training's readout: the logit shift included), in output order."""
    B, L, S = batch.batch_size, batch.seq_len, output_BSV.shape[1]
    slots = readout(batch, S, LossConfig(), **spec.loss_kwargs())
    first, T = slots.first_target, slots.main.source_BT.shape[1]
    number_BL = torch.arange(1, L + 1, device=where_BL.device).expand(B, L) * where_BL
    number_BS = slots.main.at_outputs(number_BL[:, first:first + T].float(), S)
    targets_BS = slots.main.at_outputs(slots.main.targets_BT, S)
    adv_BS = slots.main.at_outputs(slots.main.weights_BT.float(), S)
    where = number_BS > 0
    row_K = torch.arange(B, device=where.device)[:, None].expand(B, S)[where]
    return (output_BSV[where], targets_BS[where], adv_BS[where], row_K,
            number_BS[where].long() - 1)


def committed(output_BSV: torch.Tensor, batch: DiffusionBatch, spec: ForwardSpec):
    """``_read``'s logits, targets and advantages at the committed tokens
    (``batch.loss_mask_BL``)."""
    return _read(output_BSV, batch, spec, batch.loss_mask_BL)[:3]


def token_logp(logits_KV: torch.Tensor, targets_K: torch.Tensor) -> torch.Tensor:
    return -token_ce(logits_KV, targets_K)


def _tp_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the tensor-parallel ranks' vocabulary shards (backward: identity, megatron's)."""
    if not dist.is_initialized() or parallel_state.get_tensor_model_parallel_world_size() == 1:
        return x
    return reduce_from_tensor_model_parallel_region(x)


def log_mass_in(logits_KV: torch.Tensor, lt_K: torch.Tensor, le_K: torch.Tensor) -> torch.Tensor:
    """``[K]``: ``log sum_v p(v) 1[p(v) < lt] 1[p(v) <= le]``, ``p = softmax(logits)`` over the
    whole (vocabulary-parallel) vocabulary: the log-probability that a draw there was not kept
    (``choice.open_cutoffs`` gives the cutoffs; constants of the gradient). In float32, or
    float64 for float64 logits."""
    logits = logits_KV if logits_KV.dtype == torch.float64 else logits_KV.float()
    top_K = logits.detach().max(dim=-1).values
    if dist.is_initialized() and parallel_state.get_tensor_model_parallel_world_size() > 1:
        dist.all_reduce(top_K, op=dist.ReduceOp.MAX, group=parallel_state.get_tensor_model_parallel_group())
    e_KV = (logits - top_K[:, None]).exp()
    # two plain sums over the shards, so the reductions' identity backward is the exact
    # gradient (a probability divided by a reduced total would miss the other shards' terms)
    total_K = _tp_sum(e_KV.sum(dim=-1))
    p_KV = (e_KV.detach() / total_K.detach()[:, None]).double()
    # a tie within float error is a tie (the cutoffs come from the kept tokens' log-probabilities,
    # another computation of the same numbers): the rule's tie-break decides it
    tol = 16 * torch.finfo(logits.dtype).eps
    below_V = (p_KV < lt_K.double()[:, None] * (1 - tol)) & (p_KV <= le_K.double()[:, None] * (1 + tol))
    below_K = _tp_sum((e_KV * below_V).sum(dim=-1))
    return below_K.clamp_min(1e-30).log() - total_K.log()


def _open_log_q(output_BSV, pb: "PolicyBatch", spec: ForwardSpec, rule: CommitRule, logp_K):
    """``(log q_O, advantage_O)`` at the open positions (module docstring; ``choice.py``)."""
    _, _, _, row_K, pos_K = _read(output_BSV, pb.batch, spec, pb.batch.loss_mask_BL)
    open_KV, _, adv_O, row_O, pos_O = _read(output_BSV, pb.batch, spec, pb.open_BL)
    block = spec.loss_kwargs()["block_size"] or pb.batch.seq_len  # blocks count from position 0
    groups = pb.batch.seq_len // block + 1
    lt_O, le_O = open_cutoffs(logp_K.detach().exp(), row_K * groups + pos_K // block, pos_K,
                              row_O * groups + pos_O // block, pos_O, rule)
    return log_mass_in(open_KV, lt_O, le_O), adv_O


def _loss(pb: PolicyBatch, spec: ForwardSpec, kl_weight: float, rule, output_BSV):
    logits_KV, targets_K, adv_K = committed(output_BSV, pb.batch, spec)
    logp_K = token_logp(logits_KV, targets_K)
    total, kl_K = policy_gradient_sum(logp_K, adv_K, pb.ref_logp_K, kl_weight)
    logq_O = logp_K.new_zeros(0)
    if rule is not None:  # the commit rule's choice: the open positions' probability
        logq_O, adv_O = _open_log_q(output_BSV, pb, spec, rule, logp_K)
        total = total - (adv_O * logq_O).sum()
    # a padding micro-batch keeps a graph (finite entries only: [MASK] and vocabulary padding
    # columns are -inf, and a TP shard may hold only such columns)
    keep = torch.where(torch.isfinite(output_BSV[..., 0]), output_BSV[..., 0], 0.0).sum()
    loss = pb.scale * total + 0.0 * keep
    report = torch.stack([loss.detach().float(), logp_K.detach().sum().float(),
                          kl_K.detach().sum().float(), logp_K.new_tensor(float(logp_K.numel())),
                          logq_O.detach().sum().float(), logp_K.new_tensor(float(logq_O.numel()))])
    return loss, torch.tensor(1, dtype=torch.int), {"report": report}


def _forward_step(spec: ForwardSpec, kl_weight: float, rule, data_iterator, model):
    pb = next(data_iterator)
    pb = pb.to(_device())
    output = model(**forward_kwargs(pb.batch, spec.attention, spec.backend))
    return output, partial(_loss, pb, spec, kl_weight, rule)


def _device():
    return torch.cuda.current_device() if torch.cuda.is_available() else "cpu"


def policy_forward_backward(kl_weight: float, rule: CommitRule | None):
    """``run(chunks, microbatches, spec)`` for ``TrainStep``: the loss above over the step's
    ``PolicyBatch`` micro-batches; returns ``loss`` (the step's objective), ``ce`` (mean
    ``-log pi`` of the committed tokens), ``kl`` (mean k3), ``tokens``, and ``open_logq`` (mean
    log-probability of leaving an open position open). ``rule``: the trajectories' commit rule
    (None: the ``q`` term left out, an ablation)."""

    def run(chunks, microbatches: list, spec: ForwardSpec) -> dict:
        reports = run_schedule(chunks, microbatches, partial(_forward_step, spec, kl_weight, rule))
        loss, logp, kl, tokens, logq, n_open = reduce_reports(reports, len(REPORT))
        dp = parallel_state.get_data_parallel_world_size() if dist.is_initialized() else 1
        return {"loss": loss / (len(microbatches) * dp), "ce": -logp / max(tokens, 1.0),
                "kl": kl / max(tokens, 1.0), "tokens": tokens,
                "open_logq": logq / max(n_open, 1.0)}

    return run


@torch.no_grad()
def reference_logp(model, batch: DiffusionBatch, spec: ForwardSpec) -> torch.Tensor:
    """``[K]``: the (frozen) ``model``'s log-probability of each committed token of ``batch``."""
    batch = batch.to(_device())
    output_BSV = model(**forward_kwargs(batch, spec.attention, spec.backend))
    logits_KV, targets_K, _ = committed(output_BSV, batch, spec)
    return token_logp(logits_KV, targets_K).float().cpu()
