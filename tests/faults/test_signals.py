"""SIGTERM as a cluster delivers it: to every process of the run, not only the trainer.

``scancel``, a SLURM preemption or time limit, and torchrun's own shutdown (``os.killpg`` of
each rank's session) signal the DataLoader workers too. Every case must end with a saved
checkpoint, ``RUN_DIR/PREEMPTED`` and exit 0 from the ranks, so the batch script requeues.
"""

import os
import signal

import psutil

from tests.faults.conftest import FAULTS_DIR, metric_lines, start_train, wait_for

LONG = ["training.train_iters=400", "data.num_workers=1"]


def _assert_preempted(run, proc, err):
    assert (run / "PREEMPTED").is_file(), err[-3000:]
    saved = int((run / "PREEMPTED").read_text().split()[-1])
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == f"iter_{saved:07d}"
    assert (ckpts / f"iter_{saved:07d}" / "meta.json").is_file()
    assert not list(ckpts.glob("*.tmp")), list(ckpts.iterdir())
    return saved


def _tree(pid):
    root = psutil.Process(pid)
    return [root] + root.children(recursive=True)


def test_process_group_sigterm_saves_and_exits_0(tiny_store, tmp_path):
    run = tmp_path / "run"
    proc = start_train(tiny_store, run, *LONG)
    wait_for(lambda: metric_lines(run) >= 2, what="two logged steps")
    os.killpg(proc.pid, signal.SIGTERM)  # trainer and its loader worker
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    _assert_preempted(run, proc, err)


def test_torchrun_dp2_sigterm_to_every_process(tiny_store, tmp_path):
    run = tmp_path / "run"
    proc = start_train(tiny_store, run, *LONG, nproc=2)
    wait_for(lambda: metric_lines(run) >= 2, what="two logged steps")
    for p in _tree(proc.pid):  # ranks run in their own sessions: a killpg would miss them
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, err = proc.communicate(timeout=120)
    _assert_preempted(run, proc, err)


def test_torchrun_dp2_sigterm_to_launcher_only(tiny_store, tmp_path):
    run = tmp_path / "run"
    proc = start_train(tiny_store, run, *LONG, nproc=2)
    wait_for(lambda: metric_lines(run) >= 2, what="two logged steps")
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it with killpg to each rank's session
    _, err = proc.communicate(timeout=120)
    _assert_preempted(run, proc, err)


def test_sigterm_during_setup_exits_0_and_requeues(tiny_store, tmp_path):
    run = tmp_path / "run"
    proc = start_train(tiny_store, run, *LONG, wrapper=FAULTS_DIR / "hold_setup.py")
    wait_for(lambda: (run / "SETUP_HELD").is_file(), what="setup to write the run directory")
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert (run / "PREEMPTED").is_file()
    assert metric_lines(run) == 0  # stopped before step 1


def test_sigterm_while_importing_torch_exits_0_and_requeues(tiny_store, tmp_path):
    """Before: the default action, status 143 (-15 here), no PREEMPTED, so SLURM never requeued."""
    run = tmp_path / "run"
    run.mkdir()  # as slurm/pretrain.sbatch creates it
    proc = start_train(tiny_store, run, *LONG, wrapper=FAULTS_DIR / "hold_import.py")
    wait_for(lambda: (run / "IMPORT_HELD").is_file(), what="train to start importing torch")
    os.killpg(proc.pid, signal.SIGTERM)
    (run / "SIGNALLED").touch()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert (run / "PREEMPTED").read_text().split()[-1] == "0"  # stopped before step 1
    assert metric_lines(run) == 0
