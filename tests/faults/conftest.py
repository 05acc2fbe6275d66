"""Shared pieces of the fault tier: start a tiny training run, wait for it, signal it.

The runs use the demo-sized model of ``tests/training/conftest.py`` (2 layers, hidden 32,
16-token rows) on the session's ``tiny_store``; each costs a few seconds on 2 CPU cores.
"""

import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.training.conftest import env, train_cmd

FAULTS_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    """Every test under tests/faults/ carries the ``faults`` marker (``-m faults`` runs the tier)."""
    for item in items:
        if FAULTS_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


def json_store(tmp_path, name: str, validation_fraction: float) -> Path:
    """A small store of its own (a test may damage it): the stdlib's json package."""
    import sysconfig

    from megatron_diffusion.data.ingest import IngestConfig, preprocess
    from tests.helpers import make_tokenizer

    lib = Path(sysconfig.get_paths()["stdlib"])
    tok = make_tokenizer(tmp_path / "tokenizer.json", 300)
    out = tmp_path / name
    preprocess(IngestConfig(inputs=[str(lib / "json")], output=str(out), tokenizer=str(tok),
                            glob="*.py", validation_fraction=validation_fraction))
    return out


def wait_for(predicate, timeout=120, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def metric_lines(run_dir) -> int:
    f = Path(run_dir) / "metrics.jsonl"
    return len(f.read_text().splitlines()) if f.is_file() else 0


def start_train(store, run_dir, *overrides, nproc=1, extra_env=None, wrapper=None):
    """Popen of ``train`` in its own session (so a test can signal the whole process group);
    ``wrapper``: a script run instead of ``-m megatron_diffusion.cli`` (one process only)."""
    cmd = train_cmd(store, run_dir, *overrides, nproc=nproc)
    if wrapper is not None:
        assert nproc == 1 and cmd[1:4] == ["-m", "megatron_diffusion.cli", "train"], cmd
        cmd[1:3] = [str(wrapper)]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(env(), **(extra_env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def run_cli(store, run_dir, *overrides, nproc=1, resume="auto", extra=(), check=True,
            extra_env=None, timeout=300):
    """Run ``train`` to the end; ``resume=None`` leaves ``--resume`` out, ``extra`` adds options."""
    cmd = train_cmd(store, run_dir, *overrides, nproc=nproc)
    i = cmd.index("--resume")
    cmd[i:i + 2] = (["--resume", resume] if resume else []) + list(extra)
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(env(), **(extra_env or {})),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
    return proc
