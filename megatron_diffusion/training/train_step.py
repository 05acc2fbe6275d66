"""One training step: forward/backward over the global batch, the non-finite guard, the
optimizer step, and the step's record (a line of metrics.jsonl).

A non-finite loss or gradient (all ranks agree) skips the optimizer step; more than
``training.max_nan_steps`` in a row stop the run with one line, nothing saved. The record holds
the loss, ce, lr, grad norm, throughput, stage and MFU where the peak is known (``StepCost``);
the step source adds its own figures. docs/training.md, "One step".
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron_diffusion.config import RunConfig
from megatron_diffusion.errors import UsageError
from megatron_diffusion.training.finite import grads_finite
from megatron_diffusion.training.observability import attended_pairs, flops_per_token, peak_flops
from megatron_diffusion.training.forward_backward import ForwardSpec, forward_backward


@dataclass(frozen=True)
class StepCost:
    """What one step costs, for its throughput figures."""

    tokens: int
    """Model tokens per global batch (``2L`` per row in block mode)."""
    flops: float
    """Model FLOPs of one step (``observability.flops_per_token`` times ``tokens``)."""
    peak_flops: float | None
    """Peak FLOP/s of one device; None (CPU, an unknown GPU): no MFU."""
    world_size: int

    @classmethod
    def of(cls, cfg: RunConfig, num_params: int, world_size: int) -> "StepCost":
        seq = cfg.data.seq_len * (2 if cfg.attention.mode == "block" else 1)
        tokens = cfg.data.global_batch_size * seq
        # attention FLOPs of the pairs the mask allows (one-document rows: isolated packing's
        # upper bound), not the dense S x S a block-mode row never computes in full
        pairs = attended_pairs(cfg.attention, torch.zeros(1, cfg.data.seq_len, dtype=torch.long))
        flops = flops_per_token(num_params, cfg.model.num_layers, cfg.model.hidden_size, seq,
                                attended_pairs=pairs) * tokens
        return cls(tokens, flops, peak_flops(), world_size)


class TrainStep:
    """The step function of a run; counts the non-finite steps skipped in a row."""

    def __init__(self, chunks, optimizer, spec: ForwardSpec, cost: StepCost, *,
                 max_nan_steps: int, say: Callable[[str], None],
                 run: Callable = forward_backward):
        """``run(chunks, microbatches, spec) -> {"loss", "ce", ...}``: the forward/backward
        (``forward_backward.forward_backward``; the step source's, ``StepSource.forward_backward``)."""
        self.chunks, self.optimizer, self.spec, self.cost = chunks, optimizer, spec, cost
        self.max_nan_steps, self.say = max_nan_steps, say
        self.run = run
        self.nan_in_a_row = 0

    def __call__(self, microbatches: list, *, step: int, lr: float, started: float) -> dict | None:
        """Run step ``step``; its record, or None when it was skipped (non-finite)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for c in self.chunks:
            c.zero_grad_buffer()
        self.optimizer.zero_grad()
        res = self.run(self.chunks, microbatches, self.spec)
        bad = self._non_finite(res["loss"])
        if bad is not None:
            self._skip(step, bad, lr)
            return None
        self.nan_in_a_row = 0
        _, grad_norm, _ = self.optimizer.step()
        dt = time.perf_counter() - started
        return self._record(res, step=step, lr=lr, grad_norm=grad_norm, dt=dt,
                            stage=microbatches[0].stage)

    def _non_finite(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return f"non-finite loss {loss}"
        if not grads_finite(self.chunks):  # all ranks agree
            return "non-finite gradient (finite loss)"
        return None

    def _skip(self, step: int, why: str, lr: float) -> None:
        self.nan_in_a_row += 1
        self.say(f"step {step}: {why}, step skipped ({self.nan_in_a_row}/{self.max_nan_steps} "
                 "in a row)")
        if self.nan_in_a_row > self.max_nan_steps:
            # a diverged run, not a crash: one line (a traceback before), and no requeue can
            # help, so not exit 0; the weights were never saved non-finite
            first = step - self.nan_in_a_row + 1
            raise UsageError(f"training stopped: {self.nan_in_a_row} consecutive non-finite steps "
                             f"(steps {first}-{step}, the last: {why}; "
                             f"training.max_nan_steps={self.max_nan_steps}) at lr {lr:.3g}; the "
                             "last checkpoint is kept: lower optimizer.lr or check the data, then "
                             "--resume auto")

    def _record(self, res: dict, *, step, lr, grad_norm, dt, stage) -> dict:
        record = {"step": step, "loss": res["loss"], "ce": res["ce"], "lr": lr,
                  "grad_norm": float(grad_norm) if grad_norm is not None else None,
                  "tokens_per_s": self.cost.tokens / dt, "step_time_s": dt,
                  "stage": stage}
        record.update({k: v for k, v in res.items() if k not in ("loss", "ce", "num_tokens", "acc")})
        if self.cost.peak_flops:
            record["mfu"] = self.cost.flops / dt / (self.cost.peak_flops * self.cost.world_size)
        return record
