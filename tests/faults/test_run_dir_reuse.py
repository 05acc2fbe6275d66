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
