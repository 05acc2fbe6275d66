"""Training into a run directory that already holds a run's checkpoints.

Without ``--resume`` the old behaviour truncated ``metrics.jsonl``, pruned by iteration number
(deleting the new run's lower-numbered checkpoints), and left ``latest`` on the old weights. A
run dir with checkpoints now needs ``--resume auto`` or ``--overwrite``.
"""

import json

from tests.faults.conftest import run_cli
from tests.training.conftest import losses

TWO = ["training.train_iters=4", "training.save_interval=2", "training.keep_last=1"]


def test_reused_run_dir_without_resume_is_refused_and_untouched(tiny_store, tmp_path):
    run = tmp_path / "run"
    run_cli(tiny_store, run, *TWO)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    proc = run_cli(tiny_store, run, "training.train_iters=2", resume=None, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "--resume auto" in err[0] and "--overwrite" in err[0], err
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_overwrite_replaces_the_old_run(tiny_store, tmp_path):
    run = tmp_path / "run"
    run_cli(tiny_store, run, *TWO)
    run_cli(tiny_store, run, "training.train_iters=2", "training.save_interval=2", resume=None,
            extra=["--overwrite"])
    assert sorted(losses(run)) == [1, 2]
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["iter_0000002", "latest"]
    assert (ckpts / "latest").read_text().strip() == "iter_0000002"
    meta = json.loads((ckpts / "iter_0000002" / "meta.json").read_text())
    assert meta["config"]["training"]["train_iters"] == 2  # the new run's, not the old one's
    assert not list(tmp_path.glob(".*"))  # no leftover of the old run beside it


def test_a_second_trainer_on_a_live_run_dir_is_refused_and_a_dead_holder_releases(tiny_store,
                                                                                   tmp_path):
    """Two trainers on one run dir deleted each other's .tmp checkpoints and interleaved
    metrics.jsonl. A live holder of the run dir's lock refuses the second with one line naming
    it; once the holder dies (SIGKILL: no cleanup), the lock is free."""
    import subprocess
    import sys

    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from megatron_diffusion.parallel.run_dir import lock_run\n"
         f"lock_run({str(run)!r}); print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = run_cli(tiny_store, run, "training.train_iters=2", check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and f"is in use by another trainer (pid {holder.pid} on" in err[0], err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    run_cli(tiny_store, run, "training.train_iters=2")
    assert sorted(losses(run)) == [1, 2]
