"""Part runner: time budget, per-part cap (SIGALRM), failures recorded, JSON after each part.

A part is ``fn(ctx) -> dict``. Its result goes into ``results.json`` under the part's name with
``status`` (``ok``, ``failed``, ``skipped``), ``seconds`` and, unless ok, a one-line ``reason``.
Inside a part, ``ctx.guard(rows, name, fn)`` does the same per measurement, so one failing
configuration costs only its own row.
"""

import gc
import json
import signal
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_diffusion.fileio import write_text_atomic

PARTS = ("env", "ceilings", "train", "attention", "sampler", "pytest_gpu", "cpt")
"""In run order: the figures never measured before come first, the correctness tests after
them, the optional CPT last (it gets whatever time is left)."""


class PartTimeout(Exception):
    pass


class Skip(Exception):
    """Raised by a measurement that cannot run here (recorded as skipped with its reason)."""


@contextmanager
def alarm(seconds: float):
    """Raise ``PartTimeout`` in the main thread after ``seconds`` (Python-level code only)."""
    def _raise(signum, frame):
        raise PartTimeout(f"part cap of {seconds:.0f} s reached")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def reason_of(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


@dataclass
class Context:
    """What every part sees: the mode, the results so far, the clock and a shared scratch dir."""

    results_dir: Path
    dry_run: bool
    deadline: float
    """``time.monotonic()`` by which the whole check must be done."""
    work_dir: Path
    checkpoint: str | None = None
    """A megatron-diffusion checkpoint to use instead of converting the GGUF (tests, CPU)."""
    results: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict)
    """Objects parts hand on (the converted checkpoint, the measured bandwidth)."""
    part_deadline: float = 0.0
    partial: dict = field(default_factory=dict)
    """A part's figures so far (kept when the part fails or hits its cap half-way)."""

    def left(self) -> float:
        return min(self.deadline, self.part_deadline or self.deadline) - time.monotonic()

    def log(self, message: str) -> None:
        print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def guard(self, rows: list, name: str, fn, *, need_s: float = 0.0) -> dict:
        """Append ``{"name": name, **fn()}`` to ``rows``, or the reason it was not measured."""
        start = time.monotonic()
        if self.left() < need_s:
            row = {"name": name, "status": "skipped",
                   "reason": f"time budget: {self.left():.0f} s left, needs ~{need_s:.0f} s"}
        else:
            try:
                row = {"name": name, "status": "ok", **fn()}
            except PartTimeout:
                raise
            except Skip as e:
                row = {"name": name, "status": "skipped", "reason": str(e)}
            except Exception as e:  # recorded, the next configuration still runs
                row = {"name": name, "status": "failed", "reason": reason_of(e)}
                self.log(f"{name} failed:\n{traceback.format_exc()}")
            if row["status"] == "failed":
                release_memory()  # an out-of-memory row must not starve the next one
        row["seconds"] = round(time.monotonic() - start, 2)
        rows.append(row)
        self.log(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'name'})[:400]}")
        return row

    def write(self) -> Path:
        path = self.results_dir / "results.json"
        write_text_atomic(path, json.dumps(self.results, indent=1, default=str) + "\n")
        return path


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_part(ctx: Context, name: str, fn, cap_s: float, min_s: float = 5.0) -> dict:
    """Run one part under ``min(cap_s, time left)``; record its result whatever happens."""
    start = time.monotonic()
    left = ctx.deadline - start
    if left < min_s:
        result = {"status": "skipped", "reason": f"time budget: {left:.0f} s left of the run"}
    else:
        cap = min(cap_s, left)
        ctx.part_deadline = start + cap
        ctx.partial = {}
        ctx.log(f"part {name} (cap {cap:.0f} s)")
        try:
            with alarm(cap + 5.0):  # the part's own checks stop it first; this catches hangs
                result = {"status": "ok", **fn(ctx)}
        except Skip as e:
            result = {**ctx.partial, "status": "skipped", "reason": str(e)}
        except Exception as e:
            result = {**ctx.partial, "status": "failed", "reason": reason_of(e),
                      "traceback": traceback.format_exc()[-3000:]}
            ctx.log(f"part {name} failed:\n{traceback.format_exc()}")
        ctx.part_deadline, ctx.partial = 0.0, {}
        release_memory()
    result["seconds"] = round(time.monotonic() - start, 2)
    ctx.results[name] = result
    ctx.write()
    return result
