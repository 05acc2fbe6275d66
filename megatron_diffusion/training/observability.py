"""What a run reports: metrics.jsonl, the progress bar, wandb, TensorBoard. Rank 0 only.

``metrics.jsonl`` in the run directory has one JSON object per logged step (step, loss, ce, lr,
grad_norm, tokens_per_s, mfu, stage, u_max, and val_loss when validation ran). On resume, lines
past the checkpoint's step are dropped first, so the file always describes one consistent run.

The tqdm bar draws only on a terminal. When stdout is not one (a SLURM ``.out`` file, a pipe),
every logged record is also printed as one plain line (``plain_line``: iteration/total, loss,
lr, grad norm, tokens/s, step time, ETA), so a batch log shows progress per ``log_interval``.

MFU uses the standard estimate of model FLOPs per token, ``6 N + 12 n_layers h P / S``
(parameters plus attention scores and values, forward + backward), counted over the tokens the
model actually processes (``S = 2L`` per row in block mode), divided by the device's peak dense
BF16 FLOP/s (known for H100/H200/H20/A100; unknown on CPU, where MFU is not reported). ``P`` is
the number of (query, key) pairs a row attends: ``S * S`` when every pair is counted (the
textbook ``12 n_layers h S``), or the pairs the mask really allows (``attended_pairs``: about
``L * L + L * B`` of the ``4 L * L`` in block mode, ``S (S + 1) / 2`` causal), which is the
honest count for a kernel that skips masked tiles (FlexAttention).
"""

import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_diffusion.errors import UsageError
from megatron_diffusion.fileio import write_text_atomic
from megatron_diffusion.masks.dense import make_mask_mod, mask_tokens
from megatron_diffusion.parallel.run_dir import wandb_run_id

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H20": 148.0, "A100": 312.0, "H800": 989.0,
                    "B200": 2250.0}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def flops_per_token(num_params: int, num_layers: int, hidden: int, seq: int,
                    attended_pairs: float | None = None) -> float:
    """Training FLOPs per model token; ``attended_pairs`` per row (None: all ``seq * seq``)."""
    pairs = float(seq) * seq if attended_pairs is None else attended_pairs
    return 6.0 * num_params + 12.0 * num_layers * hidden * pairs / seq


def attended_pairs(cfg, document_ids_BL: torch.Tensor, query_chunk: int | None = None) -> float:
    """Mean (query, key) pairs per row that the attention mask of ``cfg`` (an
    ``AttentionConfig``) allows, counted from the mask predicate itself a chunk of query rows at a
    time (memory ``chunk x S``, so 2 x 8192-token block rows are cheap)."""
    tokens = mask_tokens(cfg, document_ids_BL)
    B, S = tokens.document_BS.shape
    mask_mod = make_mask_mod(cfg, tokens)
    device = document_ids_BL.device
    chunk = query_chunk or max(1, (1 << 24) // S)
    b_idx = torch.arange(B, device=device).view(B, 1, 1)
    h_idx = torch.zeros((), dtype=torch.long, device=device)
    kv_idx = torch.arange(S, device=device).view(1, 1, S)
    total = 0
    for start in range(0, S, chunk):
        q_idx = torch.arange(start, min(start + chunk, S), device=device).view(1, -1, 1)
        allowed = mask_mod(b_idx, h_idx, q_idx, kv_idx)
        total += int(allowed.expand(B, q_idx.shape[1], S).sum())
    return total / B


def _parse_record(line: str) -> dict | None:
    """A ``metrics.jsonl`` record, or None for a line that is not one (torn)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


class RunLogger:
    """metrics.jsonl + tqdm progress bar + optional wandb/TensorBoard, on rank 0."""

    def __init__(self, run_dir: Path, *, enabled: bool, total_steps: int, start_step: int,
                 wandb_mode: str, wandb_project: str, config: dict, tensorboard: bool):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.bar = self.wandb = self.tb = None
        if not enabled:
            return
        # no terminal (a SLURM .out file): the bar is silent, print a plain line per log instead
        self.plain = not sys.stdout.isatty()
        self.total_steps, self.start_step, self.t_start = total_steps, start_step, time.monotonic()
        self._truncate_after(start_step)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                        dynamic_ncols=True, disable=None)
        if wandb_mode != "off":
            self.wandb = _start_wandb(run_dir, wandb_mode, wandb_project, config)
        if tensorboard:  # an optional extra (megatron-diffusion[tensorboard]): only when asked
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """Keep the records up to ``step`` (the checkpoint a run resumes from). A line that is
        not a whole record (an append torn by a kill or a full disk) is dropped with a warning,
        so a requeue is never stuck on it."""
        if not self.path.is_file():
            return
        keep = []
        for n, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            record = _parse_record(line)
            if record is None:
                print(f"warning: {self.path}:{n}: dropped a torn metrics line (an interrupted "
                      "append)", file=sys.stderr, flush=True)
            elif record["step"] <= step:
                keep.append(line)
        write_text_atomic(self.path, "".join(line + "\n" for line in keep))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # full disk, read-only file system: one line, not a traceback
            raise UsageError(f"{self.path}: cannot append the step {record.get('step')} metrics "
                             f"({e.strerror or e}); the last checkpoint is kept, --resume auto "
                             "continues from it") from None
        if self.plain:
            print(self.plain_line(record), flush=True)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))},
                           step=record["step"])
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def plain_line(self, record: dict) -> str:
        """``iteration 10/1200 | loss ... | lr ... | grad norm ... | tokens/s ... | step time
        ... s | ETA h:mm:ss`` (+ ar ce, masked rate cap, mfu, val loss): what a Megatron user
        greps a job log for. ``ar ce`` (the AR term's next-token CE) and ``u_max`` (the warmup's
        masking cap) say why the loss of a diffusion CPT rises at first: more masks, not
        divergence."""
        step, width = record["step"], len(str(self.total_steps))
        done = max(step - self.start_step, 1)
        eta = (time.monotonic() - self.t_start) / done * max(self.total_steps - step, 0)
        grad = record.get("grad_norm")
        parts = [f"iteration {step:>{width}}/{self.total_steps}", f"loss {record['loss']:.4f}",
                 f"lr {record['lr']:.3e}", f"grad norm {grad:.3f}" if grad is not None else "grad norm -",
                 f"tokens/s {record['tokens_per_s']:.0f}", f"step time {record['step_time_s']:.3f} s",
                 f"ETA {datetime.timedelta(seconds=round(eta))}"]
        if "ar_ce" in record:
            parts.append(f"ar ce {record['ar_ce']:.4f}")
        if record.get("u_max") is not None and record["u_max"] < 1:
            parts.append(f"mask cap {record['u_max']:.2f}")
        if "mfu" in record:
            parts.append(f"mfu {record['mfu']:.1%}")
        if "val_loss" in record:
            parts.append(f"val loss {record['val_loss']:.4f}")
        return " | ".join(parts)

    def progress(self, step: int, postfix: dict) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(postfix, refresh=True)

    def write(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()


def _start_wandb(run_dir: Path, mode: str, project: str, config: dict):
    import wandb  # a second's import, paid only by runs that log to wandb

    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        mode = "offline"
    # one id per run directory: stable across resumes and SLURM requeues
    return wandb.init(project=project, dir=str(run_dir), id=wandb_run_id(run_dir),
                      resume="allow", mode=mode, config=config)
