"""The architecture refactor (issue 15) changes no number: deterministic runs give bit-identical losses.

Each run below (``layout_independent_init``, one process, no loader workers) is trained twice:
with this checkout and with ``REFERENCE_COMMIT``, the tree before the refactor, extracted from
git into a temporary directory and run on the same machine (floating-point kernels differ between
CPUs, so a loss recorded elsewhere could not be compared bit for bit). Every logged training and
evaluation loss must be equal with ``==``.

Where the commit is not in the clone (a shallow clone), the runs are compared with the losses
that commit produced, recorded in ``refactor_reference.json`` together with the machine they were
recorded on (torch version, CPU model and flags); on a different machine that comparison is
skipped with the reason.
"""

import io
import json
import platform
import subprocess
import tarfile
from pathlib import Path

import torch

import pytest

from tests.helpers import ROOT
from tests.training.conftest import env, train_cmd

pytestmark = pytest.mark.slow

REFERENCE_COMMIT = "28958da"  # before issue 15's refactor
RECORDED = Path(__file__).with_name("refactor_reference.json")

RUNS = {
    # block diffusion, shared packing, logit shift + AR term, warmup, then the edit stage; eval
    "block_shift_ar_edit": ["training.train_iters=6", "corruption.edit_stage_fraction=0.5",
                            "model.logit_shift=true", "attention.clean_stream=causal", "loss.ar_loss_weight=0.5",
                            "training.eval_interval=3", "training.eval_iters=1"],
    # bidirectional masked diffusion, isolated packing, sequence-normalised loss
    "bidirectional_isolated": ["training.train_iters=4", "attention.mode=bidirectional",
                               "attention.visibility=isolated", "loss.normalization=sequence"],
}


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k in ("step", "loss", "ce", "val_loss")}
            for line in lines]


def _train(root, store, run_dir, overrides):
    cmd = train_cmd(store, run_dir, *overrides)
    proc = subprocess.run(cmd, cwd=root, env=dict(env(), PYTHONPATH=str(root)), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _records(run_dir)


def machine() -> dict:
    """What decides the floating-point bits of a CPU run: torch and the CPU."""
    cpu = [line for line in Path("/proc/cpuinfo").read_text().splitlines()
           if line.startswith(("model name", "flags"))][:2] if Path("/proc/cpuinfo").exists() else []
    return {"torch": torch.__version__, "machine": platform.machine(),
            "cpu": [line.split(":", 1)[1].strip() for line in cpu]}


def _reference_tree(tmp_path_factory):
    archive = subprocess.run(["git", "archive", REFERENCE_COMMIT], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        return None
    tree = tmp_path_factory.mktemp("reference")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    return tree


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_store):
    """name -> the reference commit's records: run now from git, else recorded on this machine."""
    tree = _reference_tree(tmp_path_factory)
    if tree is not None:
        return lambda name: _train(tree, tiny_store, tmp_path_factory.mktemp(name), RUNS[name])
    recorded = json.loads(RECORDED.read_text())
    if recorded["machine"] != machine():
        pytest.skip(f"{REFERENCE_COMMIT} is not in this clone and {RECORDED.name} was recorded on "
                    f"another machine ({recorded['machine']}): bits cannot be compared")
    return lambda name: recorded["runs"][name]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_losses_bit_identical_to_the_reference_commit(name, reference, tiny_store, tmp_path):
    overrides = RUNS[name]
    ours = _train(ROOT, tiny_store, tmp_path / "ours", overrides)
    assert len(ours) == int(overrides[0].split("=")[1])
    assert ours == reference(name)
