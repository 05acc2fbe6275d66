"""A preemption signal after a preemptible command finished does not change its exit status.

SLURM can deliver a SIGTERM after the work is saved: its job-terminate for a run that failed on
a node that crashed is retried to that node once it is back, and kills the requeued run's
processes there (same job id). After the last step and save of a training run that turned exit
status 0 into 143 and the finished job into FAILED (docs/slurm.md, "Node faults"). The
interpreter's shutdown is the window: a SIGTERM sent from an atexit hook lands in it.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_PROGRAM = (
    "import atexit, os, signal, sys\n"
    "from megatron_diffusion.cli import main\n"
    "atexit.register(lambda: os.kill(os.getpid(), signal.{sig}))\n"
    "sys.argv = ['megatron-diffusion', {command!r}, '--help']\n"
    "sys.exit(main())\n"
)


def _exit_status(sig: str, command: str) -> int:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", _PROGRAM.format(sig=sig, command=command)],
                          cwd=REPO, env=env, capture_output=True, timeout=120).returncode


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR2"])
def test_a_signal_after_train_finished_keeps_exit_status_0(sig):
    assert _exit_status(sig, "train") == 0


def test_main_called_from_python_restores_the_handlers():
    from megatron_diffusion.cli import main

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert signal.getsignal(signal.SIGTERM) is before
