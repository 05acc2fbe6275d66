"""Run directory naming, wandb id stability and run snapshots."""

import multiprocessing
import subprocess
from pathlib import Path

import pytest
import yaml

import megatron_diffusion
from megatron_diffusion.errors import UsageError
from megatron_diffusion.parallel import run_dir as run_dir_module
from megatron_diffusion.parallel.run_dir import (
    code_version,
    job_run_name,
    resolve_run_dir,
    snapshot_run,
    wandb_run_id,
)


def test_user_run_dir_wins(tmp_path):
    environ = {"SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "cpt"}
    assert resolve_run_dir(tmp_path / "mine", environ) == tmp_path / "mine"


def test_slurm_run_dir_is_job_name_and_id():
    environ = {"SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "cpt 8b/stage2"}
    assert resolve_run_dir(None, environ, runs_root="/r") == Path("/r/cpt_8b_stage2-77")
    assert resolve_run_dir("", {"SLURM_JOB_ID": "5"}) == Path("runs/job-5")
    assert job_run_name("a.b-c_d", "1") == "a.b-c_d-1"


def test_default_name_outside_slurm_only():
    assert resolve_run_dir(None, {}, default_name="cpu_demo") == Path("runs/cpu_demo")
    environ = {"SLURM_JOB_ID": "8", "SLURM_JOB_NAME": "cpt"}
    assert resolve_run_dir(None, environ, default_name="cpu_demo") == Path("runs/cpt-8")


def test_run_dir_required_outside_slurm():
    with pytest.raises(UsageError, match="^--run-dir: required outside a SLURM job"):
        resolve_run_dir(None, {})


def test_wandb_id_is_created_once(tmp_path):
    run = tmp_path / "run"
    first = wandb_run_id(run)
    assert len(first) == 8 and first.isalnum() and first.islower()
    assert wandb_run_id(run) == first  # a restart reads it back
    assert (run / "wandb_id").read_text().strip() == first
    assert sorted(p.name for p in run.iterdir()) == ["wandb_id"]  # no temp files left
    assert wandb_run_id(tmp_path / "other") != first


def test_wandb_id_file_is_checked(tmp_path):
    (tmp_path / "wandb_id").write_text("not an id!\n")
    with pytest.raises(UsageError, match="wandb_id: got 'not an id!'"):
        wandb_run_id(tmp_path)


def _race(run, queue):
    queue.put(wandb_run_id(run))


def test_wandb_id_racing_processes_agree(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(tmp_path, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    ids = {queue.get(timeout=30) for _ in procs}
    for p in procs:
        p.join()
    assert len(ids) == 1


def test_snapshot_writes_config_command_and_versions(tmp_path):
    config = {"model": {"num_layers": 2}, "training": {"lr": 3e-4}}
    argv = ["megatron-diffusion", "train", "--config", "a b.yaml"]
    path = snapshot_run(tmp_path, config, argv, restart_count=2, extra={"launch": {"rank": 0}})
    assert path.parent == tmp_path / "snapshots" and path.name.endswith("-r2")
    assert yaml.safe_load((path / "config.yaml").read_text()) == config
    assert (path / "command.txt").read_text() == "megatron-diffusion train --config 'a b.yaml'\n"
    version = yaml.safe_load((path / "version.yaml").read_text())
    assert version["package_version"] == megatron_diffusion.__version__
    assert version["packages"]["torch"].startswith("2.")
    assert version["restart_count"] == 2 and version["launch"] == {"rank": 0}
    assert "torch==" in (path / "requirements.txt").read_text()
    # Two snapshots in the same second do not overwrite each other; no temp dirs remain.
    second = snapshot_run(tmp_path, config, argv, restart_count=2)
    assert second != path and len(list((tmp_path / "snapshots").iterdir())) == 2


def test_snapshot_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken_freeze():
        raise RuntimeError("disk full")

    monkeypatch.setattr(run_dir_module, "_freeze", broken_freeze)
    with pytest.raises(RuntimeError, match="disk full"):
        snapshot_run(tmp_path, {}, ["x"])
    assert list((tmp_path / "snapshots").iterdir()) == []


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_code_version_reads_commit_and_dirty_flag(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    facts, diff = code_version(repo)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert facts["git_commit"] == head.stdout.strip()
    assert facts["git_dirty"] is False and diff == ""
    (repo / "a.py").write_text("x = 2\n")
    facts, diff = code_version(repo)
    assert facts["git_dirty"] is True and facts["git_status"] == [" M a.py"]
    assert "+x = 2" in diff
    facts, diff = code_version(tmp_path / "not-a-repo")
    assert (facts["git_commit"], facts["git_dirty"], diff) == (None, None, "")
