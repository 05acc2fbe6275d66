"""A loader worker killed by SIGKILL (what the out-of-memory killer does) in the middle of a run.

Before: torch's SIGCHLD handler raised its ``RuntimeError`` wherever the trainer was (a traceback,
exit 1) and the steps since the last checkpoint were lost. Now the loader reports the death at
its next micro-batch, the trainer saves the last completed step (the loader state back at that
step's end, though part of the next step's data was handed out) and stops with one line naming
the worker, its signal and the likely cause, exit 2; ``--resume auto`` finishes the run with the
losses of an uninterrupted one.
"""

import re

import psutil

from tests.faults.conftest import FAULTS_DIR, metric_lines, run_cli, start_train, wait_for
from tests.training.conftest import losses

RUN = ["training.train_iters=6", "data.num_workers=1"]


def _worker(trainer_pid: int) -> psutil.Process:
    children = psutil.Process(trainer_pid).children()
    workers = [p for p in children if "resource_tracker" not in " ".join(p.cmdline())]
    assert len(workers) == 1, [p.cmdline() for p in children]
    return workers[0]


def _dead(worker: psutil.Process) -> bool:
    try:
        return worker.status() == psutil.STATUS_ZOMBIE  # the trainer has not looked yet
    except psutil.NoSuchProcess:  # it has (torch's SIGCHLD handler, before the fix)
        return True


def test_sigkilled_worker_saves_the_last_step_and_resume_auto_finishes(tiny_store, tmp_path):
    straight = tmp_path / "straight"
    run_cli(tiny_store, straight, *RUN)
    run = tmp_path / "run"
    # 2 micro-batches per step: held after the first of step 4, the worker dies mid-fetch
    proc = start_train(tiny_store, run, *RUN, wrapper=FAULTS_DIR / "hold_loader.py",
                       extra_env={"HOLD_AFTER_MICROBATCH": "7"})
    wait_for(lambda: (run / "LOADER_HELD").is_file(), what="the loader to hand out 7 micro-batches")
    worker = _worker(proc.pid)
    worker.kill()
    wait_for(lambda: _dead(worker), what="the worker to die")
    (run / "RELEASE").touch()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"megatron-diffusion train: error: data loader worker 0 (pid {worker.pid}) was killed by "
        "SIGKILL (signal 9), most likely by the out-of-memory killer: lower data.num_workers "
        "(now 1) or give the job more memory; saved step 3, --resume auto continues from it")
    assert (run / "checkpoints" / "latest").read_text().strip() == "iter_0000003"
    assert not (run / "PREEMPTED").exists()  # a failure: no requeue
    assert sorted(losses(run)) == [1, 2, 3]

    run_cli(tiny_store, run, *RUN)
    assert losses(run) == losses(straight)  # steps 1-6 once each, identical floats


def test_a_worker_sigkilled_on_one_rank_stops_both_ranks_after_the_same_step(tiny_store, tmp_path):
    """DP=2 under torchrun: before, the other rank waited in its next collective until torchrun
    killed it, and nothing was saved; now both ranks save the same step and stop."""
    run = tmp_path / "run"
    proc = start_train(tiny_store, run, "training.train_iters=400", "data.num_workers=1", nproc=2)
    wait_for(lambda: metric_lines(run) >= 2, timeout=300, what="two logged steps")
    ranks = {p.environ().get("RANK"): p for p in psutil.Process(proc.pid).children()}
    worker = _worker(ranks["1"].pid)
    worker.kill()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0  # torchrun's own status for a failed rank (1)
    # one line from each rank (their stderr is one pipe: the two lines may run together)
    errors = re.findall(r"megatron-diffusion train: error: (.*?); saved step (\d+), --resume auto "
                        r"continues from it", err)
    assert len(errors) == 2, err[-3000:]
    assert sorted(e[0] for e in errors) == [
        "a data loader worker of rank 1 died (that rank's message says which and why)",
        f"data loader worker 0 of data-parallel rank 1 (pid {worker.pid}) was killed by SIGKILL "
        "(signal 9), most likely by the out-of-memory killer: lower data.num_workers (now 1) or "
        "give the job more memory"]
    assert errors[0][1] == errors[1][1], errors  # the same step on both ranks
    step = int(errors[0][1])
    assert (run / "checkpoints" / "latest").read_text().strip() == f"iter_{step:07d}"
    assert not list((run / "checkpoints").glob("*.tmp"))
