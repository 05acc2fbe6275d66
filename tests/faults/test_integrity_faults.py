"""Integrity faults of issue 24: what a killed conversion leaves, a store on a read-only file
system, a checkpoint that meets another tokenizer than its own.

Each test failed before its fix: the conversion's temporaries stayed forever, the index cache
write was a traceback, a checkpoint of another tokenizer was trained on or sampled from silently.
"""

import os
import subprocess
import sys

from megatron_diffusion.cli import main


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def test_convert_removes_the_temporaries_of_a_killed_conversion(tmp_path, capsys):
    from tests.convert.hf_fixtures import make_hf_model

    hf = make_hf_model(tmp_path / "hf", "llama", tied=False, num_layers=2)
    for kind, out, argv in (
            ("hf-to-mcore", tmp_path / "mc", ["--hf", str(hf), "--add-mask-token"]),
            ("mcore-to-hf", tmp_path / "export", ["--checkpoint", str(tmp_path / "mc")])):
        dead = tmp_path / f".{out.name}.tmp-{_dead_pid()}"  # kill -9 left it
        (dead / "checkpoints").mkdir(parents=True)
        alive = tmp_path / f".{out.name}.tmp-{os.getppid()}"  # a live conversion's: kept
        alive.mkdir()
        code = main(["convert", kind, *argv, "--out", str(out), "--no-progress"])
        assert code == 0, capsys.readouterr().err
        assert not dead.exists(), kind
        assert alive.is_dir(), kind
        assert out.is_dir() and not list(tmp_path.glob(f".{out.name}.tmp-{os.getpid()}"))
