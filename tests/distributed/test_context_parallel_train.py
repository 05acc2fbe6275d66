"""The trainer under context parallelism: CP=2 trains like one process and resumes exactly.

Real runs of ``train`` on the tiny store (2 gloo processes, block mode, 32 model tokens per row):
the per-step losses of CP=2 equal one process's within 1e-4 (the trainer-level tolerance of
``test_train_e2e``); a CP=2 run stopped at half way (``exit_interval``) and resumed gives
identical floats to the straight CP=2 run (checkpoint: weights replicated over CP, one loader
state per data-parallel rank); its checkpoint samples with CP=1.
"""

import subprocess
import sys

import pytest

from tests.helpers import ROOT
from tests.training.conftest import env, losses, run_train

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
STEPS = 4
CP2 = ["parallel.context_parallel_size=2"]


def test_cp2_trains_like_one_process_and_resumes_exactly(tiny_store, tmp_path):
    ref, straight, run = tmp_path / "ref", tmp_path / "straight", tmp_path / "run"
    run_train(tiny_store, ref, f"training.train_iters={STEPS}")
    run_train(tiny_store, straight, f"training.train_iters={STEPS}", *CP2, nproc=2)
    a, b = losses(ref), losses(straight)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-4, (step, a[step], b[step])

    run_train(tiny_store, run, f"training.train_iters={STEPS}",
              f"training.exit_interval={STEPS // 2}", *CP2, nproc=2)
    assert max(losses(run)) == STEPS // 2
    loader_states = (run / "checkpoints").glob("iter_*/loader/*.json")
    assert sorted(p.name for p in loader_states) == ["dp_000.json"]  # one per DP rank
    run_train(tiny_store, run, f"training.train_iters={STEPS}", *CP2, nproc=2)
    assert losses(run) == b  # identical floats, not approximately

    sample = subprocess.run([sys.executable, "-m", "megatron_diffusion.cli", "sample",
                             "--checkpoint", str(run), "--prompt", "def f(x):",
                             "--max-new-tokens", "4"], cwd=ROOT, env=env(), capture_output=True,
                            text=True, timeout=300)
    assert sample.returncode == 0, sample.stderr[-3000:]
