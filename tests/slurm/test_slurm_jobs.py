"""The sbatch scripts under a real SLURM: launch modes, preemption by SIGUSR2, requeue, resume.

Every job runs 2 ranks on the one local node (2 CPUs) with gloo. The program is the cluster
selftest (``megatron_diffusion.parallel.selftest``), which proves launch, signal delivery, requeue
and resume independently of the trainer; the last tests run the trainer itself.
"""

import importlib.util
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_diffusion.parallel.hostlist import expand_hostlist
from megatron_diffusion.parallel.launch_env import port_for_job
from megatron_diffusion.parallel.run_dir import resolve_run_dir

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = REPO / "slurm" / "pretrain.sbatch"
SELFTEST = "-m megatron_diffusion.parallel.selftest"
MODES = ["srun", "torchrun"]


def _selftest_summary(log: str) -> dict:
    lines = [line for line in log.splitlines() if line.startswith("SELFTEST ")]
    assert len(lines) == 1, log
    return json.loads(lines[0][len("SELFTEST "):])


def test_hostlist_expansion_matches_scontrol(local_slurm):
    rng = random.Random(0)
    texts = ["n[01-03,07]", "gpu-[001-002]x[1-2]", "n[098-101]", "n[8-11],m", "n[1-03]",
             "n[001-3]", "a,,b", "r[1-2]-n[01-02]", "n[3],n[1-2],n[2]"]
    for _ in range(30):  # random forms that SLURM 22.05 accepts (a bracket ends each name)
        parts = []
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(["n", "gpu-", "r1-"])
            for _ in range(rng.randint(1, 2)):
                lo = rng.randint(0, 120)
                width = rng.randint(1, 3)
                ranges = [f"{lo:0{width}d}-{lo + rng.randint(0, 4)}", str(rng.randint(0, 9))]
                name += "[" + ",".join(ranges[: rng.randint(1, 2)]) + "]"
            parts.append(name)
        texts.append(",".join(parts))
    for text in texts:
        result = local_slurm.run("scontrol", "show", "hostnames", text)
        assert result.returncode == 0, (text, result.stderr)
        assert expand_hostlist(text) == result.stdout.split(), text


@pytest.mark.parametrize("mode", MODES)
def test_selftest_job_in_each_launch_mode(local_slurm, tmp_path, mode):
    env = local_slurm.env(
        GPUS_PER_NODE="2", LAUNCH_MODE=mode, PROGRAM=SELFTEST,
        EXTRA_ARGS="--backend gloo --expect-world-size 2",
    )
    job_name = f"self test/{mode}"  # the default run dir replaces ' ' and '/'
    job_id, status = local_slurm.sbatch(
        PRETRAIN, f"--job-name={job_name}", f"--chdir={tmp_path}",
        f"--output={tmp_path}/job.out", env=env, wait=True,
    )
    log = (tmp_path / "job.out").read_text()
    assert status == 0, log
    summary = _selftest_summary(log)
    assert summary["ok"] and summary["world_size"] == 2 and summary["job_id"] == job_id
    assert summary["hosts"] == [local_slurm.host]
    if mode == "srun":  # ranks derived the rendezvous from SLURM's variables alone
        assert summary["launcher"] == "slurm"
        assert summary["master"] == f"{local_slurm.host}:{port_for_job(job_id)}"
    else:
        assert summary["launcher"] == "torchrun"
    run_dir = resolve_run_dir(None, {"SLURM_JOB_ID": job_id, "SLURM_JOB_NAME": job_name})
    assert (tmp_path / run_dir).is_dir()  # bash and Python derive the same run directory


def test_failing_rank_fails_the_job_without_requeue(local_slurm, tmp_path):
    env = local_slurm.env(
        GPUS_PER_NODE="2", LAUNCH_MODE="srun", PROGRAM=SELFTEST, RUN_DIR=str(tmp_path / "run"),
        EXTRA_ARGS="--backend gloo --expect-world-size 3",
    )
    job_id, _ = local_slurm.sbatch(PRETRAIN, f"--output={tmp_path}/job.out", env=env)
    info = local_slurm.wait(job_id)
    log = (tmp_path / "job.out").read_text()
    # Exit 1 from a rank, or 143 when --kill-on-bad-exit terminated the other one first.
    assert (info["JobState"], info["Restarts"]) == ("FAILED", "0"), log
    assert info["ExitCode"] in ("1:0", "143:0"), log
    assert "world_size 2, expected 3" in log


def _wait_for_step(run_dir, step: int, timeout: float = 240) -> None:
    progress = run_dir / "selftest_progress"
    deadline = time.monotonic() + timeout
    while not (progress.exists() and int(progress.read_text().split()[1]) >= step):
        assert time.monotonic() < deadline, f"no step {step} in {run_dir} after {timeout} s"
        time.sleep(0.1)


def _signal_records(run_dir) -> list[dict]:
    lines = (run_dir / "signals.log").read_text().splitlines()
    return [dict(field.split("=", 1) for field in line.split()) for line in lines]


@pytest.mark.parametrize("mode", MODES)
def test_usr2_checkpoints_requeues_and_resumes(local_slurm, tmp_path, mode):
    run_dir = tmp_path / "run"
    steps = 50  # 10 s of steps: the signal lands mid-run even on a loaded machine
    env = local_slurm.env(
        GPUS_PER_NODE="2", LAUNCH_MODE=mode, PROGRAM=SELFTEST, RUN_DIR=str(run_dir),
        EXTRA_ARGS=f"--backend gloo --steps {steps} --step-seconds 0.2",
    )
    job_id, _ = local_slurm.sbatch(PRETRAIN, f"--output={tmp_path}/job.out", env=env)
    _wait_for_step(run_dir, 3)
    # What SLURM does at `--signal=B:USR2@120`: signal the batch shell (only).
    local_slurm.run("scancel", "--batch", "--signal=USR2", job_id)
    info = local_slurm.wait(job_id)
    log = (tmp_path / "job.out").read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), log
    assert "forwarding it to the step" in log and "requeueing job" in log

    state = json.loads((run_dir / "selftest_state.json").read_text())
    first, second = state["runs"]
    assert (first["restart"], first["preempted"], first["signal"]) == (0, True, "SIGUSR2")
    assert 3 <= first["end_step"] < steps
    assert (second["restart"], second["start_step"], second["end_step"]) == (1, first["end_step"], steps)
    assert not second["preempted"] and state["step"] == steps
    assert not (run_dir / "PREEMPTED").exists()  # the resumed run cleared the marker
    # Both launch modes deliver the forwarded signal to every rank, not only to rank 0.
    first_run = [r for r in _signal_records(run_dir) if r["restart"] == "0"]
    assert sorted((r["rank"], r["signal"]) for r in first_run) == [("0", "SIGUSR2"), ("1", "SIGUSR2")]


def test_time_limit_signal_reaches_the_batch_shell(local_slurm, tmp_path):
    # 1-minute limit, signal 55 s before it: SLURM sends it on its next time check (~5-35 s).
    run_dir = tmp_path / "run"
    env = local_slurm.env(
        GPUS_PER_NODE="2", LAUNCH_MODE="srun", PROGRAM=SELFTEST, RUN_DIR=str(run_dir),
        EXTRA_ARGS="--backend gloo --steps 100000 --step-seconds 0.1",
    )
    job_id, _ = local_slurm.sbatch(
        PRETRAIN, "--time=1", "--signal=B:USR2@55", f"--output={tmp_path}/job.out", env=env
    )
    deadline = time.monotonic() + 150
    while local_slurm.job(job_id).get("Restarts") != "1":
        assert time.monotonic() < deadline, (tmp_path / "job.out").read_text()
        time.sleep(0.5)
    local_slurm.run("scancel", job_id)  # the requeued run would go on for 100000 steps
    local_slurm.wait(job_id)
    state = json.loads((run_dir / "selftest_state.json").read_text())
    assert state["runs"][0]["signal"] == "SIGUSR2" and state["runs"][0]["preempted"]


def test_throughput_and_convert_scripts_pass_arguments(local_slurm, tmp_path):
    # A stand-in python records the command line the script ran through srun.
    fake = tmp_path / "fake-python"
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\necho \'{"ok": 1}\'\n')
    fake.chmod(0o755)
    jobs = {}
    for script, extra in [
        ("throughput.sbatch", {"CKPT": "ckpts/iter 10", "OUT": str(tmp_path / "bench.json")}),
        ("convert.sbatch", {}),
    ]:
        env = local_slurm.env(
            PYTHON=str(fake), ARGS_OUT=str(tmp_path / f"{script}.args"),
            EXTRA_ARGS="--flag 'two words' x=1", **extra,
        )
        job_id, _ = local_slurm.sbatch(
            REPO / "slurm" / script, f"--output={tmp_path}/{script}.out", env=env
        )
        jobs[script] = job_id
    for script, job_id in jobs.items():
        info = local_slurm.wait(job_id)
        assert info["ExitCode"] == "0:0", (tmp_path / f"{script}.out").read_text()
    bench = (tmp_path / "throughput.sbatch.args").read_text().splitlines()
    assert bench == ["-m", "megatron_diffusion.cli", "bench-sampler", "--checkpoint",
                     "ckpts/iter 10", "--json", "--flag", "two words", "x=1"]
    assert (tmp_path / "bench.json").read_text() == '{"ok": 1}\n'  # the JSON lands in OUT
    convert = (tmp_path / "convert.sbatch.args").read_text().splitlines()
    assert convert == ["-m", "megatron_diffusion.cli", "convert", "--flag", "two words", "x=1"]


def test_scripts_refuse_missing_knobs(local_slurm, tmp_path):
    env = local_slurm.env()
    for name in ("CONFIG", "CKPT", "EXTRA_ARGS", "PROGRAM"):
        env.pop(name, None)
    jobs = {}
    for script in ("pretrain.sbatch", "throughput.sbatch", "convert.sbatch"):
        jobs[script], _ = local_slurm.sbatch(
            REPO / "slurm" / script, f"--output={tmp_path}/{script}.out", env=env
        )
    for script, variable in [("pretrain.sbatch", "CONFIG"), ("throughput.sbatch", "CKPT"),
                             ("convert.sbatch", "EXTRA_ARGS")]:
        info = local_slurm.wait(jobs[script])
        log = (tmp_path / f"{script}.out").read_text()
        assert info["JobState"] == "FAILED" and f"{variable}: set it" in log, log


def test_submit_cli_preempts_requeues_and_resumes(local_slurm, tmp_path):
    submitit = pytest.importorskip("submitit", reason="submitit not installed (optional extra)")
    run_dir = tmp_path / "run"
    env = local_slurm.env()
    env["PYTHONPATH"] += ":" + str(Path(submitit.__file__).parents[1])  # the job imports it too
    command = [
        sys.executable, "-m", "megatron_diffusion.cli", "submit", "--gpus-per-node", "0",
        "--tasks-per-node", "2", "--time", "5", "--folder", str(tmp_path / "logs"),
        "--module", "megatron_diffusion.parallel.selftest", "--",
        "--backend", "gloo", "--steps", "50", "--step-seconds", "0.2", "--run-dir", str(run_dir),
    ]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    job_id = re.search(r"submit: job (\d+)", result.stdout).group(1)
    _wait_for_step(run_dir, 3)
    # What `--signal=USR2@<delay>` (submitit's form, no B:) does: signal every task.
    local_slurm.run("scancel", "--signal=USR2", job_id)
    info = local_slurm.wait(job_id)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), info
    state = json.loads((run_dir / "selftest_state.json").read_text())
    first, second = state["runs"]
    assert first["preempted"] and first["signal"] == "SIGUSR2"
    assert (second["start_step"], second["end_step"], state["step"]) == (first["end_step"], 50, 50)


# The trainer under pretrain.sbatch. The trainer contract: `megatron-diffusion train --config CFG
# --run-dir DIR [--resume auto] [--wandb off] [key=value ...]`; on SIGUSR2 it checkpoints at the
# next step boundary, writes RUN_DIR/PREEMPTED and exits 0.
TRAIN_OVERRIDES = "--wandb off training.train_iters=8 parallel.tensor_model_parallel_size=2"


def _tiny_overrides(store) -> str:
    """The trainer tests' tiny model on the session's tiny store (space-free YAML values)."""
    from tests.training.conftest import TINY

    tiny = " ".join(o for o in TINY if not o.startswith("training.wandb"))
    return f"{TRAIN_OVERRIDES} data.blend=[[1.0,{store}]] {tiny}"


def _trainer_missing() -> bool:
    """True unless this checkout holds the trainer (an editable install elsewhere does not count)."""
    try:
        spec = importlib.util.find_spec("megatron_diffusion.cli.train")
    except ModuleNotFoundError:  # no megatron_diffusion.cli package at all
        return True
    return spec is None or not str(spec.origin).startswith(str(REPO))


needs_trainer = pytest.mark.skipif(_trainer_missing(), reason="trainer not yet on this branch")


def _losses(run_dir) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def _train_env(local_slurm, run_dir, store, mode="srun"):
    return local_slurm.env(
        GPUS_PER_NODE="2", LAUNCH_MODE=mode, CONFIG="examples/cpu_demo.yaml",
        RUN_DIR=str(run_dir), EXTRA_ARGS=_tiny_overrides(store),
    )


@needs_trainer
def test_pretrain_sbatch_trains(local_slurm, tmp_path, tiny_store):
    run_dir = tmp_path / "run"
    job_id, status = local_slurm.sbatch(
        PRETRAIN, f"--output={tmp_path}/job.out", env=_train_env(local_slurm, run_dir, tiny_store), wait=True
    )
    log = (tmp_path / "job.out").read_text()
    assert status == 0, log
    assert _losses(run_dir)[-1][0] == 8, log
    checkpoints = [p for p in run_dir.rglob("*") if "checkpoint" in p.name or p.name.startswith("iter_")]
    assert checkpoints, f"no checkpoint under {run_dir}"


@needs_trainer
def test_pretrain_sbatch_preempted_run_ends_like_an_uninterrupted_one(local_slurm, tmp_path,
                                                                      tiny_store):
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    straight_job, _ = local_slurm.sbatch(
        PRETRAIN, f"--output={tmp_path}/straight.out", env=_train_env(local_slurm, straight, tiny_store)
    )
    assert local_slurm.wait(straight_job, timeout=300)["ExitCode"] == "0:0"
    job_id, _ = local_slurm.sbatch(
        PRETRAIN, f"--output={tmp_path}/preempted.out", env=_train_env(local_slurm, preempted, tiny_store)
    )
    deadline = time.monotonic() + 180
    while not ((preempted / "metrics.jsonl").exists() and len(_losses(preempted)) >= 2):
        assert time.monotonic() < deadline, (tmp_path / "preempted.out").read_text()
        time.sleep(0.1)
    local_slurm.run("scancel", "--batch", "--signal=USR2", job_id)
    info = local_slurm.wait(job_id, timeout=300)
    log = (tmp_path / "preempted.out").read_text()
    assert (info["ExitCode"], info["Restarts"]) == ("0:0", "1"), log
    assert _losses(preempted)[-1] == _losses(straight)[-1]
