"""The sbatch scripts without a cluster: syntax, refusals, and the multi-node launch commands.

The local SLURM has one node; here a 4-node allocation is faked through SLURM's variables (and a
stand-in ``scontrol``) with ``DRY_RUN=1``, which prints the launch command instead of running it.
"""

import os
import subprocess
from pathlib import Path

import pytest

from megatron_diffusion.parallel.launch_env import port_for_job

REPO = Path(__file__).resolve().parents[2]
# the sbatch scripts, local_slurm.sh, two_node_cluster.sh and slurm_conf.sh (which both source)
SCRIPTS = sorted((REPO / "slurm").glob("*.sbatch")) + sorted((REPO / "slurm").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["pretrain", "throughput", "convert"])
def test_refuses_to_run_outside_a_job(name):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(["bash", str(REPO / "slurm" / f"{name}.sbatch")], env=environ,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert f"{name}.sbatch: run it with sbatch (no SLURM_JOB_ID)" in result.stderr


def _dry_run(tmp_path, **knobs) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"  # `scontrol show hostnames gpu-[07-10]`
    scontrol.write_text('#!/bin/bash\nprintf "gpu-07\\ngpu-08\\ngpu-09\\ngpu-10\\n"\n')
    scontrol.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    environ.update(
        PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="123457", SLURM_JOB_NAME="cpt 8b",
        SLURM_JOB_NODELIST="gpu-[07-10]", SLURM_NNODES="4", SLURM_CPUS_ON_NODE="96", DRY_RUN="1",
        CONFIG="cfg.yaml", **knobs,
    )
    result = subprocess.run(["bash", str(REPO / "slurm" / "pretrain.sbatch")], env=environ,
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "runs").exists()  # a dry run creates nothing
    return result.stdout


def test_torchrun_mode_runs_one_torchrun_per_node(tmp_path):
    out = _dry_run(tmp_path, EXTRA_ARGS="x.y='a b' --wandb off")
    port = port_for_job("123457")
    assert f"master gpu-07:{port}" in out
    assert "srun --nodes=4 --ntasks-per-node=1 --cpus-per-task=96 --kill-on-bad-exit=1" in out
    assert (f"torchrun --nnodes=4 --nproc-per-node=8 --rdzv-backend=c10d "
            f"--rdzv-endpoint=gpu-07:{port} --rdzv-id=123457 --max-restarts=0 "
            f"-m megatron_diffusion.cli train --config cfg.yaml --resume auto "
            f"--run-dir runs/cpt_8b-123457 x.y=a b --wandb off") in out


def test_srun_mode_runs_one_task_per_rank(tmp_path):
    out = _dry_run(tmp_path, LAUNCH_MODE="srun", GPUS_PER_NODE="4", RUN_DIR="/r", PYTHON="py3",
                   SRUN_ARGS="--container-image=img.sqsh --gpu-bind=closest")
    assert ("srun --nodes=4 --ntasks-per-node=4 --cpus-per-task=24 --kill-on-bad-exit=1 "
            "--container-image=img.sqsh --gpu-bind=closest py3 -m megatron_diffusion.cli train "
            "--config cfg.yaml --resume auto --run-dir /r") in out


def test_bad_launch_mode_is_refused(tmp_path):
    with pytest.raises(AssertionError, match="LAUNCH_MODE: got 'mpirun', expected torchrun or srun"):
        _dry_run(tmp_path, LAUNCH_MODE="mpirun")
