"""The trajectory objective end to end: distill a tiny checkpoint's orders, train on them.

``distill-trajectories`` on the session's tiny store with a 2-step checkpoint, then training with
``data.trajectories`` (half the rows on eq. 9's trajectory states): the run trains, resumes
exactly and gives the same losses under TP=2 as in one process.
"""

import subprocess
import sys

import pytest

from tests.helpers import ROOT
from tests.training.conftest import env, losses, run_train

pytestmark = pytest.mark.slow
STEPS = 4


@pytest.fixture(scope="module")
def trajectories(tiny_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher")
    run_train(tiny_store, run, "training.train_iters=2")
    out = tmp_path_factory.mktemp("traj") / "orders"
    proc = subprocess.run([sys.executable, "-m", "megatron_diffusion.cli", "distill-trajectories",
                           "--checkpoint", str(run), "--data", str(tiny_store), "--out", str(out),
                           "--rows", "8", "--candidates", "1"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _train(store, run, trajectories, *extra, nproc=1):
    run_train(store, run, f"data.trajectories={trajectories}", "corruption.trajectory_fraction=0.5",
              f"training.train_iters={STEPS}", *extra, nproc=nproc)
    return losses(run)


def test_trains_and_resumes_exactly(trajectories, tiny_store, tmp_path):
    straight = _train(tiny_store, tmp_path / "straight", trajectories)
    assert sorted(straight) == list(range(1, STEPS + 1))
    assert all(v == v and v < 100 for v in straight.values())
    plain = tmp_path / "plain"  # the same steps on the store's packed rows: other rows, other masks
    run_train(tiny_store, plain, f"training.train_iters={STEPS}")
    assert losses(plain) != straight
    run = tmp_path / "resumed"
    _train(tiny_store, run, trajectories, f"training.exit_interval={STEPS // 2}")
    assert max(losses(run)) == STEPS // 2
    assert _train(tiny_store, run, trajectories) == straight


@pytest.mark.distributed
def test_tensor_parallel_matches_one_process(trajectories, tiny_store, tmp_path):
    one = _train(tiny_store, tmp_path / "one", trajectories)
    two = _train(tiny_store, tmp_path / "tp2", trajectories, "parallel.tensor_model_parallel_size=2",
                 nproc=2)
    assert one.keys() == two.keys()
    assert all(abs(one[k] - two[k]) <= 1e-4 * max(1.0, abs(one[k])) for k in one)


def test_a_trajectory_directory_of_another_length_is_one_line(trajectories, tiny_store, tmp_path):
    proc = run_train(tiny_store, tmp_path / "bad", f"data.trajectories={trajectories}",
                     "data.seq_len=32", "training.train_iters=1", check=False)
    assert proc.returncode == 2
    assert "data.trajectories" in proc.stderr and "data.seq_len is 32" in proc.stderr
