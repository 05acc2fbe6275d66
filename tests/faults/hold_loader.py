"""``python tests/faults/hold_loader.py TRAIN_ARGS...``: ``train`` whose loader pauses once it has
handed out ``HOLD_AFTER_MICROBATCH`` micro-batches (env), before it asks its workers for the next,
until the test has done what it came to do (at most 60 s). ``RUN_DIR/LOADER_HELD`` marks the
pause; the test creates ``RUN_DIR/RELEASE`` to end it. The trainer's main thread sleeps there as
it would compute a step, so a worker's death arrives as it would in the middle of a step."""

import os
import sys
import time
from pathlib import Path

from megatron_diffusion.cli import main
from megatron_diffusion.data.loader import DiffusionDataLoader

RUN_DIR = Path(sys.argv[sys.argv.index("--run-dir") + 1])
HOLD_AFTER = int(os.environ["HOLD_AFTER_MICROBATCH"])
_iter = DiffusionDataLoader.__iter__


def _held_iter(self):
    for n, batch in enumerate(_iter(self), start=1):
        yield batch
        if n == HOLD_AFTER:
            (RUN_DIR / "LOADER_HELD").touch()
            end = time.time() + 60
            while not (RUN_DIR / "RELEASE").exists() and time.time() < end:
                time.sleep(0.05)


DiffusionDataLoader.__iter__ = _held_iter
sys.exit(main(sys.argv[1:]))
