"""End-to-end trainer runs on CPU: exact resume, parallel layouts, preemption, crash safety."""

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.training.conftest import env, losses, run_train, train_cmd

pytestmark = pytest.mark.slow
STEPS = 6


@pytest.fixture(scope="module")
def straight(tiny_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight")
    run_train(tiny_store, run, f"training.train_iters={STEPS}")
    return losses(run)


def test_losses_are_finite_and_logged_every_step(straight):
    assert sorted(straight) == list(range(1, STEPS + 1))
    assert all(0 < v < 100 for v in straight.values())


@pytest.mark.parametrize("layout", [[], ["parallel.pipeline_model_parallel_size=2"]], ids=["tp1", "pp2"])
def test_resume_is_exact(layout, tiny_store, tmp_path, straight):
    nproc = 2 if layout else 1
    if layout:  # the PP=2 straight run is its own reference
        ref = tmp_path / "ref"
        run_train(tiny_store, ref, f"training.train_iters={STEPS}", *layout, nproc=nproc)
        straight = losses(ref)
    run = tmp_path / "run"
    run_train(tiny_store, run, f"training.train_iters={STEPS}", f"training.exit_interval={STEPS // 2}",
              *layout, nproc=nproc)
    assert max(losses(run)) == STEPS // 2
    assert not (run / "PREEMPTED").exists()  # exit_interval is not a preemption
    resumed = run_train(tiny_store, run, f"training.train_iters={STEPS}", *layout, nproc=nproc)
    assert losses(run) == straight  # identical floats, not approximately
    said = [line for line in resumed.stderr.splitlines() if "continuing from" in line]
    assert len(said) == 1 and said[0].startswith("--resume auto: continuing from ")  # rank 0 only
    assert said[0].endswith(f"iter_{STEPS // 2:07d} (step {STEPS // 2} of {STEPS})")


@pytest.mark.distributed
@pytest.mark.parametrize("layout", [["parallel.tensor_model_parallel_size=2"],
                                    ["parallel.pipeline_model_parallel_size=2", "data.global_batch_size=8"],
                                    ["parallel.use_distributed_optimizer=true"]],
                         ids=["tp2", "pp2_4mb", "dp2_distopt"])
def test_parallel_layouts_match_one_process(layout, tiny_store, tmp_path):
    gbs = [o for o in layout if o.startswith("data.global_batch_size")]
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_train(tiny_store, ref, "training.train_iters=3", *gbs)
    run_train(tiny_store, run, "training.train_iters=3", *layout, nproc=2)
    a, b = losses(ref), losses(run)
    assert sorted(a) == sorted(b)
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-4, (step, a[step], b[step])


def _wait_for(predicate, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_sigterm_saves_and_resume_continues(tiny_store, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(tiny_store, run, "training.train_iters=400"), cwd=ROOT,
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    assert _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    saved = int((run / "PREEMPTED").read_text().split()[-1])  # "<time> <step>"
    assert (run / "checkpoints" / "latest").read_text().strip() == f"iter_{saved:07d}"
    assert max(losses(run)) == saved
    run_train(tiny_store, run, f"training.train_iters={saved + 2}")
    assert not (run / "PREEMPTED").exists()
    assert sorted(losses(run)) == list(range(1, saved + 3))


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{p.name}: {cmd[:120]}")
    return found


def test_kill9_during_checkpoint_write_keeps_previous(tiny_store, tmp_path):
    run = tmp_path / "run"
    run_train(tiny_store, run, "training.train_iters=2")  # a complete checkpoint at step 2
    ckpts = run / "checkpoints"
    proc = subprocess.Popen(train_cmd(tiny_store, run, "training.train_iters=4"), cwd=ROOT,
                            env=dict(env(), MEGATRON_DIFFUSION_FAULT_PAUSE_BEFORE_COMMIT="60"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait_for(lambda: (ckpts / "iter_0000004.tmp" / "rng").is_dir()
                     and any((ckpts / "iter_0000004.tmp" / "rng").iterdir()))
    proc.kill()
    proc.wait()
    # no helper process (checkpoint writer's Manager, loader workers) outlives the trainer
    assert _wait_for(lambda: not _processes_mentioning(str(run)), timeout=20), \
        _processes_mentioning(str(run))
    assert (ckpts / "latest").read_text().strip() == "iter_0000002"
    assert not (ckpts / "iter_0000004").exists()
    run_train(tiny_store, run, "training.train_iters=4")  # resumes from 2, cleans the .tmp
    assert (ckpts / "latest").read_text().strip() == "iter_0000004"
    assert not (ckpts / "iter_0000004.tmp").exists()
    assert sorted(losses(run)) == [1, 2, 3, 4]


def test_init_from_loads_weights_only(tiny_store, tmp_path, straight):
    src = tmp_path / "src"
    run_train(tiny_store, src, "training.train_iters=4")
    run = tmp_path / "cpt"
    run_train(tiny_store, run, "training.train_iters=2", "--init-from", str(src))
    got = losses(run)
    assert sorted(got) == [1, 2]  # a new run: step counter and optimizer start fresh
    assert got[1] != straight[1]  # but from the trained weights, not the seeded init
    assert got[1] < straight[1]


def test_validation_measures_the_objective_not_the_warmup(tiny_store, tmp_path):
    """During the corruption warmup the training loss is tiny (few masks, w = 1); validation must
    still report the full ELBO, so at step 1 it is far above the warmup training loss."""
    run = tmp_path / "run"
    run_train(tiny_store, run, "training.train_iters=2", "corruption.warmup_steps=100",
              "training.eval_interval=1", "training.eval_iters=2")
    import json

    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["u_max"] < 0.05
    assert first["val_loss"] > 2 * first["loss"]


def test_the_ar_term_is_logged_as_ar_ce(tiny_store, tmp_path):
    """With loss.ar_loss_weight the clean stream's next-token CE (the AR model a CPT keeps) is
    in metrics.jsonl."""
    import json

    run = tmp_path / "run"
    run_train(tiny_store, run, "training.train_iters=2", "model.logit_shift=true",
              "attention.clean_stream=causal", "loss.ar_loss_weight=1.0")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["ar_ce"] < 20 for r in records)
