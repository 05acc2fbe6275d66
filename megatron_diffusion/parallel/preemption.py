"""Preemption: a signal asks for a checkpoint at the next step boundary, then a requeue.

The contract between ``slurm/pretrain.sbatch`` and a long-running program (the trainer,
``selftest --steps``): SIGUSR2 (120 s before the time limit, or from an operator) or SIGTERM
reaches every process of the step; the handler only records it; at the next step boundary
``Preemption.should_stop()`` all-reduces the flag so every rank stops after the same step; the
program saves, rank 0 writes ``RUN_DIR/PREEMPTED`` (``write_marker``) and all exit 0; the batch
shell then requeues the job, which keeps its id and resumes (``clear_marker`` at start). The
handlers must be in place from the first moment a signal can come: ``megatron-diffusion train``
installs a ``Preemption`` before it imports torch and megatron-core, and the trainer's own
starts with what that one received. docs/slurm.md "Preemption and requeue" tells the whole story.
"""

import os
import signal
import tempfile
import time
from pathlib import Path

MARKER = "PREEMPTED"
"""Name of the marker file in the run directory; its presence asks the batch shell to requeue."""
DEFAULT_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class Preemption:
    """Records SIGUSR2/SIGTERM and agrees across ranks on when to stop.

    Use as a context manager (handlers are installed on entry, the previous ones restored on
    exit), or call ``install``/``uninstall``. Installed over another ``Preemption``, it starts
    with the signal that one received and hands its own back when uninstalled, so no signal is
    lost between the two.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS):
        self.signals = tuple(signals)
        self.received: signal.Signals | None = None
        """The first signal received, or None."""
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)

    def install(self) -> "Preemption":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        for outer in self._outer():  # read after the swap: a signal goes to one or the other
            self.received = self.received or outer.received
        return self

    def uninstall(self) -> None:
        outer = self._outer()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        for o in outer:
            o.received = o.received or self.received

    def _outer(self) -> list["Preemption"]:
        """The ``Preemption`` objects whose handlers this one replaced."""
        owners = (getattr(h, "__self__", None) for h in self._previous.values())
        return [o for o in dict.fromkeys(owners) if isinstance(o, Preemption)]

    def __enter__(self) -> "Preemption":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    @property
    def requested(self) -> bool:
        """True once this process received one of the signals."""
        return self.received is not None

    def should_stop(self, group=None) -> bool:
        """True on every rank when any rank received a signal; call at a step boundary.

        A collective when torch.distributed is initialised (every rank of ``group`` must call
        it at the same step); with nccl the flag travels as a CUDA tensor, so this is one small
        device sync: call it every step, or every few steps to save the sync.
        """
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        device = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item())


def write_marker(run_dir: str | os.PathLike, reason: str = "") -> Path:
    """Create ``RUN_DIR/PREEMPTED`` (atomically) after the checkpoint is saved."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{MARKER}.")
    with os.fdopen(fd, "w") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {reason}".rstrip() + "\n")
    path = run_dir / MARKER
    os.replace(tmp, path)
    return path


def clear_marker(run_dir: str | os.PathLike) -> bool:
    """Remove ``RUN_DIR/PREEMPTED`` at start-up; True if it was there (a resumed preemption)."""
    try:
        (Path(run_dir) / MARKER).unlink()
        return True
    except FileNotFoundError:
        return False


def marker_exists(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / MARKER).exists()
