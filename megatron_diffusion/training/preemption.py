"""SIGTERM / SIGUSR2: save a checkpoint at the next step boundary and exit 0 (SLURM preemption).

The handler only sets a flag; the trainer checks it between steps, agrees on it across ranks
(any rank signalled -> all stop at the same step), saves, writes ``RUN_DIR/PREEMPTED`` for the
batch script (which then requeues the job), and exits 0.
"""

import signal

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class PreemptionFlag:
    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def install(self) -> "PreemptionFlag":
        for sig in PREEMPT_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
