"""``python tests/faults/hold_setup.py TRAIN_ARGS...``: ``train`` whose setup pauses once the run
directory is written, until a preemption signal has arrived (at most 60 s), so a test can signal
it during setup however fast the machine is. ``RUN_DIR/SETUP_HELD`` marks the pause."""

import sys
import time

from megatron_diffusion.cli import main
from megatron_diffusion.training.trainer import Trainer

_snapshot = Trainer._snapshot


def _held_snapshot(self):
    _snapshot(self)
    (self.run_dir / "SETUP_HELD").touch()
    end = time.time() + 60
    while self.preemption.received is None and time.time() < end:
        time.sleep(0.05)


Trainer._snapshot = _held_snapshot
sys.exit(main(sys.argv[1:]))
