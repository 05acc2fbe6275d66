"""The policy-gradient loss through megatron's forward/backward (``objective``'s loss on rows).

The rows are ``rows.policy_rows``: ``loss_mask_BL`` marks each committed token once,
``loss_weights_BL`` holds its trajectory's advantage. On a micro-batch the loss function reads
the log-probability of every committed token where training reads its prediction
(``training.context_parallel_loss.output_targets``: the block-mode logit shift included; the
cross entropy is megatron's vocabulary-parallel one, so tensor parallelism needs nothing more),
and the reference model's for the same tokens (``reference_logp``, computed before the step):

    loss = scale * ( -sum_i A_i log pi(x_i) + kl_weight * sum_i k3(ref_i - log pi(x_i)) )

``k3(d) = exp(d) - d - 1`` (>= 0) is the per-token KL estimator on tokens drawn from the policy
(``objective.k3_kl``). ``scale = M / T``: ``T`` the committed tokens and ``M`` the micro-batches of
the whole step (all data-parallel ranks), and every micro-batch reports a count of 1, so
megatron's per-token normalisation (it divides the summed gradients by the summed counts) leaves
exactly ``objective.policy_gradient_loss`` over the step's tokens.
"""

from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.loss.elbo import _token_ce
from megatron_diffusion.model.inputs import forward_kwargs
from megatron_diffusion.onpolicy.objective import k3_kl
from megatron_diffusion.training.context_parallel_loss import output_targets
from megatron_diffusion.training.step import ForwardSpec, reduce_reports, run_schedule

REPORT = ("loss", "logp", "kl", "tokens")


@dataclass
class PolicyBatch:
    """A micro-batch of policy rows and what its loss needs besides them."""

    batch: DiffusionBatch
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
        return PolicyBatch(self.batch.to(device), self.ref_logp_K.to(device), self.scale)


def committed(output_BSV: torch.Tensor, batch: DiffusionBatch, spec: ForwardSpec):
    """``(logits_KV, targets_K, advantage_K)``: the output that predicts each committed token."""
    S = output_BSV.shape[1]
    kwargs = spec.loss_kwargs()
    targets_BS, is_BS, _ = output_targets(replace(batch, loss_weights_BL=batch.loss_mask_BL.float()),
                                          S, LossConfig(), **kwargs)
    adv_BS = output_targets(batch, S, LossConfig(), **kwargs)[1]
    where = is_BS > 0
    return output_BSV[where], targets_BS[where], adv_BS[where]


def token_logp(logits_KV: torch.Tensor, targets_K: torch.Tensor) -> torch.Tensor:
    return -_token_ce(logits_KV[None], targets_K[None])[0]


def _loss(pb: PolicyBatch, spec: ForwardSpec, kl_weight: float, output_BSV):
    logits_KV, targets_K, adv_K = committed(output_BSV, pb.batch, spec)
    logp_K = token_logp(logits_KV, targets_K)
    kl_K = k3_kl(logp_K, pb.ref_logp_K)
    total = -(adv_K * logp_K).sum() + kl_weight * kl_K.sum()
    # a padding micro-batch keeps a graph (column 0 is a real token: [MASK] and vocabulary
    # padding columns are -inf)
    loss = pb.scale * total + 0.0 * output_BSV[..., 0].sum()
    report = torch.stack([loss.detach().float(), logp_K.detach().sum().float(),
                          kl_K.detach().sum().float(), torch.tensor(float(logp_K.numel()))])
    return loss, torch.tensor(1, dtype=torch.int), {"report": report}


def _forward_step(spec: ForwardSpec, kl_weight: float, data_iterator, model):
    pb = next(data_iterator)
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    pb = pb.to(device)
    output = model(**forward_kwargs(pb.batch, spec.attention, spec.backend))
    return output, partial(_loss, pb, spec, kl_weight)


def policy_forward_backward(kl_weight: float):
    """``run(chunks, microbatches, spec)`` for ``TrainStep``: the loss above over the step's
    ``PolicyBatch`` micro-batches; returns ``loss`` (the step's objective), ``ce`` (mean
    ``-log pi`` of the committed tokens), ``kl`` (mean k3) and ``tokens``."""

    def run(chunks, microbatches: list, spec: ForwardSpec) -> dict:
        reports = run_schedule(chunks, microbatches, partial(_forward_step, spec, kl_weight))
        loss, logp, kl, tokens = reduce_reports(reports, len(REPORT))
        dp = parallel_state.get_data_parallel_world_size() if dist.is_initialized() else 1
        return {"loss": loss / (len(microbatches) * dp), "ce": -logp / max(tokens, 1.0),
                "kl": kl / max(tokens, 1.0), "tokens": tokens}

    return run


@torch.no_grad()
def reference_logp(model, batch: DiffusionBatch, spec: ForwardSpec) -> torch.Tensor:
    """``[K]``: the (frozen) ``model``'s log-probability of each committed token of ``batch``."""
    output_BSV = model(**forward_kwargs(batch, spec.attention, spec.backend))
    logits_KV, targets_K, _ = committed(output_BSV, batch, spec)
    return token_logp(logits_KV, targets_K).float()
