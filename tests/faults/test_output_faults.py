"""Output-path faults: a full disk, a read-only file system, an output that is a directory.

Before the fix each was a traceback (a checkpoint save on a full disk said ``unexpected pos
704 vs 598``). Each is now one line naming the path, exit 2, and nothing partial is left.
The file systems are small tmpfs mounts in a private mount namespace (``unshare -m``, root);
the tests skip where that is not allowed.
"""

import shutil
import subprocess
import sys

import pytest

from megatron_diffusion.cli import main
from tests.helpers import ROOT
from tests.training.conftest import TINY, env, losses, train_cmd

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
