"""Output-path faults: a full disk, a read-only file system, an output that is a directory.

Before the fix each was a traceback (a checkpoint save on a full disk said ``unexpected pos
704 vs 598``; ``preprocess`` and ``distill-trajectories`` on a full disk and ``train-tokenizer``
into a read-only directory too, and ``distill-trajectories`` left a half-created store that no
re-run could resume). Each is now one line naming the path, exit 2, and nothing partial is left.
The file systems are small tmpfs mounts in a private mount namespace (``unshare -m``, root);
the tests skip where that is not allowed.
"""

import shutil
import subprocess
import sys
import sysconfig

import pytest

from megatron_diffusion.cli import main
from megatron_diffusion.masks.config import AttentionConfig
from tests.helpers import ROOT, make_checkpoint
from tests.training.conftest import TINY, env, losses, train_cmd

STDLIB = sysconfig.get_paths()["stdlib"]
LIST_MOUNT = '"$@"; rc=$?; ls -A "$0" | sed "s/^/LEFT: /"; exit $rc'
"""``sh -c LIST_MOUNT DIR CMD...``: run CMD, then list what it left in DIR."""

CFG = str(ROOT / "examples" / "cpu_demo.yaml")


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs unshare -m and tmpfs mounts (root)")


def _under_mount(mountpoint, options, cmd, timeout=300):
    """Run ``cmd`` with a fresh tmpfs (``options``) mounted on ``mountpoint``, privately."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o "$1" tmpfs "$2" || exit 99; shift 2; exec "$@"'
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", options, str(mountpoint), *cmd],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode != 99, proc.stderr
    return proc


def _one_line(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


@needs_mount
def test_checkpoint_save_on_a_full_disk(tiny_store, tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"  # the metrics live beside it, on the real disk
    list_after = '"$@"; rc=$?; ls -A "$0" | sed "s/^/LEFT: /"; exit $rc'  # inside the mount
    cmd = ["sh", "-c", list_after, str(ckpts), *train_cmd(tiny_store, run, "training.train_iters=2")]
    proc = _under_mount(ckpts, "size=64k", cmd)
    _one_line(proc, "No space left on device", str(ckpts))
    assert "LEFT:" not in proc.stdout, proc.stdout  # no partial iter_0000002.tmp
    assert sorted(losses(run)) == [1, 2]


@needs_mount
def test_run_dir_on_a_read_only_file_system(tiny_store, tmp_path):
    ro = tmp_path / "ro"
    proc = _under_mount(ro, "ro", train_cmd(tiny_store, ro / "run", "training.train_iters=2"))
    _one_line(proc, "--run-dir", "Read-only file system")


@needs_mount
def test_inspect_data_out_on_a_read_only_file_system(tiny_store, tmp_path):
    ro = tmp_path / "ro"
    cmd = [sys.executable, "-m", "megatron_diffusion.cli", "inspect-data", "--config", CFG,
           "--out", str(ro / "o.jsonl"), f"data.blend=[[1.0, {tiny_store}]]", *TINY,
           "training.train_iters=10"]
    proc = _under_mount(ro, "ro", cmd)
    _one_line(proc, str(ro / "o.jsonl"), "Read-only file system")


def test_inspect_data_out_that_is_a_directory(tiny_store, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.mkdir()
    code = main(["inspect-data", "--config", CFG, "--out", str(out), f"data.blend=[[1.0, {tiny_store}]]",
                 *TINY, "training.train_iters=10"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "directory" in lines[0], err
    assert out.is_dir() and not list(out.iterdir()) and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def _one_error_line(proc, *needles):
    """Exit 2 and one error line (a progress bar may share stderr), no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


@needs_mount
def test_preprocess_on_a_full_disk(tiny_store, tmp_path):
    full = tmp_path / "full"
    cmd = ["sh", "-c", LIST_MOUNT, str(full), sys.executable, "-m", "megatron_diffusion.cli",
           "preprocess", "--input", f"{STDLIB}/json", f"{STDLIB}/email", "--glob", "*.py",
           "--tokenizer", str(tiny_store / "tokenizer.json"), "--output", str(full / "s.zarr")]
    proc = _under_mount(full, "size=64k", cmd)
    _one_error_line(proc, str(full / "s.zarr"), "No space left on device")
    assert "LEFT:" not in proc.stdout, proc.stdout  # no partial store, no .s.zarr.tmp-PID


@needs_mount
@pytest.mark.parametrize("name", ["tok.json", "new/tok.json"])
def test_train_tokenizer_into_a_read_only_directory(tmp_path, name):
    ro = tmp_path / "ro"
    cmd = [sys.executable, "-m", "megatron_diffusion.cli", "train-tokenizer", "--input",
           f"{STDLIB}/json", "--glob", "*.py", "--vocab-size", "300", "--output", str(ro / name)]
    proc = _under_mount(ro, "ro", cmd)
    _one_error_line(proc, str(ro / name), "Read-only file system")


@pytest.fixture(scope="module")
def block_checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt")
    make_checkpoint(run, attention=AttentionConfig(mode="block", block_size=4), num_layers=2)
    return run


def _distill_cmd(checkpoint, store, out):
    return [sys.executable, "-m", "megatron_diffusion.cli", "distill-trajectories", "--checkpoint",
            str(checkpoint), "--data", str(store), "--out", str(out), "--rows", "3",
            "--candidates", "1"]


@needs_mount
def test_distill_trajectories_on_a_disk_too_full_for_its_store(block_checkpoint, tiny_store,
                                                               tmp_path):
    full = tmp_path / "full"  # 16 KiB: not even the store's metadata fits
    cmd = ["sh", "-c", LIST_MOUNT, str(full / "traj"),
           *_distill_cmd(block_checkpoint, tiny_store, full / "traj")]
    proc = _under_mount(full, "size=16k", cmd)
    _one_error_line(proc, str(full / "traj" / "rank00000-of-00001.zarr"), "No space left on device")
    assert "LEFT:" not in proc.stdout, proc.stdout  # before: a group without settings, never resumable


@needs_mount
def test_distill_trajectories_on_a_disk_that_fills_during_the_rows(block_checkpoint, tiny_store,
                                                                   tmp_path):
    full = tmp_path / "full"  # 48 KiB: the store is created, the first row does not fit
    # then the disk grows and the same command runs again: it resumes and finishes
    rerun = '"$@"; rc=$?; mount -o remount,size=4m "$0" && "$@" 2>/dev/null; echo "RERUN=$?"; exit $rc'
    cmd = ["sh", "-c", rerun, str(full), *_distill_cmd(block_checkpoint, tiny_store, full / "traj")]
    proc = _under_mount(full, "size=48k", cmd)
    _one_error_line(proc, "rank00000-of-00001.zarr", "No space left on device", "row 0 is not stored")
    assert "RERUN=0" in proc.stdout and "3 rows done" in proc.stdout, proc.stdout
