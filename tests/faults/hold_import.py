"""``python tests/faults/hold_import.py TRAIN_ARGS...``: ``train`` whose first import of torch
pauses until the test has signalled it (at most 60 s), so a test can signal the import phase
however fast the machine is. ``RUN_DIR/IMPORT_HELD`` marks the pause; the test creates
``RUN_DIR/SIGNALLED`` once its signal is sent."""

import importlib.abc
import sys
import time
from pathlib import Path

from megatron_diffusion.cli import main

RUN_DIR = Path(sys.argv[sys.argv.index("--run-dir") + 1])


class _HoldTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            (RUN_DIR / "IMPORT_HELD").touch()
            end = time.time() + 60
            while not (RUN_DIR / "SIGNALLED").exists() and time.time() < end:
                time.sleep(0.05)
        return None  # the ordinary finders import it


assert "torch" not in sys.modules, "the hold must come before the first import of torch"
sys.meta_path.insert(0, _HoldTorch())
sys.exit(main(sys.argv[1:]))
