"""The architecture refactor (issue 15) changes no number: deterministic runs give bit-identical losses.

Each run below (``layout_independent_init``, one process, no loader workers) is trained twice:
with this checkout and with ``REFERENCE_COMMIT``, the tree before the refactor, extracted from
git into a temporary directory and run on the same machine (floating-point kernels differ between
CPUs, so a loss recorded elsewhere could not be compared bit for bit). Every logged training and
evaluation loss must be equal with ``==``.
"""

import io
import json
import subprocess
import tarfile

import pytest

from tests.helpers import ROOT
from tests.training.conftest import env, train_cmd

pytestmark = pytest.mark.slow

REFERENCE_COMMIT = "28958da"  # before issue 15's refactor

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


@pytest.fixture(scope="module")
def reference_tree(tmp_path_factory):
    archive = subprocess.run(["git", "archive", REFERENCE_COMMIT], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        pytest.fail(f"git archive {REFERENCE_COMMIT} failed (a shallow clone?): {archive.stderr.decode()}")
    tree = tmp_path_factory.mktemp("reference")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    return tree


@pytest.mark.parametrize("name", sorted(RUNS))
def test_losses_bit_identical_to_the_reference_commit(name, reference_tree, tiny_store, tmp_path):
    overrides = RUNS[name]
    ours = _train(ROOT, tiny_store, tmp_path / "ours", overrides)
    theirs = _train(reference_tree, tiny_store, tmp_path / "reference", overrides)
    assert len(ours) == int(overrides[0].split("=")[1])
    assert ours == theirs
