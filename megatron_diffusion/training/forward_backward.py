"""One forward/backward over a global batch with megatron-core's pipeline schedules.

``get_forward_backward_func`` picks the schedule: no pipelining, 1F1B, or interleaved 1F1B
(virtual pipeline). Every rank of a data-parallel replica reads the same micro-batches from its
loader (TP and PP ranks need the positions and the mask too), so no broadcast of batches is
needed. The loss is returned as (sum, token count) per micro-batch with
``calculate_per_token_loss=True``: megatron adds counts over micro-batches, and
``finalize_model_grads`` all-reduces them over data-parallel ranks and divides the gradients
once, so gradients do not depend on how the global batch is split (docs/method.md 1, ``loss/elbo.py``).

What decides how a micro-batch is run (attention layout, loss, logit shift, attention backend)
travels as one ``ForwardSpec``, built once per run from its config.
"""

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_diffusion.config import RunConfig
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.loss.elbo import readout_loss
from megatron_diffusion.loss.readout import Readout, readout
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model.inputs import forward_kwargs
from megatron_diffusion.parallel import context_parallel
from megatron_diffusion.parallel.process_groups import host_collective


@dataclass(frozen=True)
class ForwardSpec:
    """How a micro-batch goes through the model and into the loss, decided once per run.

    ``attention`` gives the model input (positions, the mask) and places the block-mode shift,
    ``backend`` the mask's form (``model.inputs.forward_kwargs``), ``loss`` and ``logit_shift``
    the loss and its readout (``loss.readout``, ``loss.elbo``). ``of(cfg)`` reads them from a run
    config; an evaluation swaps the loss (``dataclasses.replace(spec, loss=...)``).
    """

    attention: AttentionConfig
    loss: LossConfig
    logit_shift: bool = False
    backend: str = "sdpa"
    head_subset: bool = True
    """Apply the output layer only at the outputs the loss reads (``Readout.needed``); False:
    at every output (the loss then selects the same rows)."""

    @classmethod
    def of(cls, cfg: RunConfig) -> "ForwardSpec":
        return cls(cfg.attention, cfg.loss, logit_shift=cfg.model.logit_shift,
                   backend=cfg.model.attention_backend)

    def loss_kwargs(self) -> dict:
        """The keywords of ``diffusion_loss`` besides the loss config."""
        return {"logit_shift": self.logit_shift, "block_size": self.attention.block_size,
                "visibility": self.attention.visibility}

    def readout(self, batch) -> Readout:
        """The micro-batch's loss readout over the whole model output (``tokens_BS``)."""
        return readout(batch, batch.tokens_BS.shape[1], self.loss, **self.loss_kwargs())


def _loss_func(batch, spec: ForwardSpec, ro: Readout, span, output):
    loss_sum, num_tokens, metrics = readout_loss(output, ro, batch, spec.loss, span=span,
                                                 counts_tokens=context_parallel.rank() == 0)
    zero = torch.zeros((), device=loss_sum.device)
    report = torch.stack([loss_sum.detach().float(), num_tokens.float(),
                          metrics["ce_sum"].float(), metrics["ce_count"].float(),
                          metrics["correct"].float(),
                          metrics.get("ar_ce_sum", zero).float(),
                          metrics.get("ar_ce_count", zero).float()])
    return loss_sum, num_tokens, {"report": report}


def make_forward_step(spec: ForwardSpec):
    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        batch = batch.to(device)
        inputs = context_parallel.shard_inputs(forward_kwargs(batch, spec.attention, spec.backend))
        ro = spec.readout(batch)
        span = context_parallel.local_span(ro.num_outputs, context_parallel.rank(),
                                           context_parallel.world_size())
        if spec.head_subset:  # the LM head only where the loss reads (this CP rank's slice)
            inputs["logits_at_BS"] = ro.needed(*span)
        output = model(**inputs)
        return output, partial(_loss_func, batch, spec, ro, span)

    return forward_step


def run_schedule(chunks, microbatches: list, forward_step, *, forward_only: bool = False) -> list:
    """Megatron's schedule over ``microbatches`` with ``forward_step``; the loss functions'
    third outputs (on the last pipeline stage; an empty list elsewhere)."""
    first = microbatches[0]
    n_chunks = len(chunks)
    iterators = [iter(microbatches) for _ in range(n_chunks)] if n_chunks > 1 else iter(microbatches)
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iterators,
        model=chunks if n_chunks > 1 else chunks[0],
        num_microbatches=len(microbatches),
        seq_length=first.tokens_BS.shape[1],
        micro_batch_size=first.tokens_BS.shape[0],
        forward_only=forward_only,
    )


def reduce_reports(reports: list, size: int) -> list[float]:
    """Sum the micro-batches' ``report`` vectors (``size`` numbers each) over micro-batches,
    data(-and-context)-parallel ranks and the pipeline (only its last stage has them)."""
    totals = torch.zeros(size, dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        for r in reports:
            totals += r["report"].double().cpu()
    if dist.is_initialized():
        host_collective(dist.all_reduce, totals, group=parallel_state.get_data_parallel_group(
            with_context_parallel=True))  # CP ranks hold parts of the same rows
        host_collective(dist.all_reduce, totals,
                        group=parallel_state.get_pipeline_model_parallel_group())
    return totals.tolist()


def forward_backward(chunks, microbatches: list, spec: ForwardSpec, *,
                     forward_only: bool = False) -> dict:
    """Run the schedule over ``microbatches`` (this DP rank's share of the global batch).

    Returns the global-batch figures, reduced over micro-batches and data-parallel ranks and
    broadcast from the last pipeline stage: ``loss`` (per token), ``num_tokens``, ``ce`` (mean
    cross entropy of the positions with loss), ``acc`` (argmax accuracy at those positions), and
    with an AR term (``loss.ar_loss_weight``) ``ar_ce``: the clean stream's next-token cross
    entropy, the AR model the CPT is meant to keep.
    """
    reports = run_schedule(chunks, microbatches, make_forward_step(spec), forward_only=forward_only)
    loss_sum, num_tokens, ce_sum, ce_count, correct, ar_sum, ar_count = reduce_reports(reports, 7)
    out = {"loss": loss_sum / max(num_tokens, 1.0), "num_tokens": num_tokens,
           "ce": ce_sum / max(ce_count, 1.0), "acc": correct / max(ce_count, 1.0)}
    if ar_count > 0:
        out["ar_ce"] = ar_sum / ar_count
    return out
