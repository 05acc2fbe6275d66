"""Refactors change no number: deterministic runs give bit-identical losses.

Each run below (``layout_independent_init``, one process, no loader workers) is trained with
this checkout and with each reference commit, the tree before a refactor, extracted from git into
a temporary directory and run on the same machine (floating-point kernels differ between CPUs,
so a loss recorded elsewhere could not be compared bit for bit). Every logged training and
evaluation loss (and an on-policy run's reward, verifier score, KL and tokens per forward) must be
equal with ``==``:

* ``28958da``, before issue 15's architecture refactor: the pretraining runs;
* ``f60b3b2``, before issue 28's step sources: the pretraining runs and an on-policy run (a
  tiny base model, then three on-policy steps from it with the model verifier and the KL anchor).
  That tree knows no ``training.step_source`` (it inferred on-policy from the ``onpolicy``
  section); only this checkout is given the key.

Where a commit is not in the clone (a shallow clone), the runs are compared with the figures that
commit produced, recorded in ``refactor_reference.json`` together with the machine they were
recorded on (torch version, CPU model and flags); on a different machine that comparison is
skipped with the reason. ``REFACTOR_REFERENCE_RECORD=COMMIT[,COMMIT]`` (the commits in the clone)
records those commits' figures there, as this machine gives them.
"""

import io
import json
import os
import platform
import subprocess
import tarfile
from pathlib import Path

import torch

import pytest

from tests.helpers import ROOT
from tests.training.conftest import env, train_cmd

pytestmark = pytest.mark.slow

REFERENCES = {"28958da": "before issue 15's refactor", "f60b3b2": "before issue 28's step sources"}
RECORDED = Path(__file__).with_name("refactor_reference.json")
FIGURES = ("step", "loss", "ce", "val_loss", "reward", "verifier", "kl", "tokens_per_forward")

RUNS = {
    # block diffusion, shared packing, logit shift + AR term, warmup, then the edit stage; eval
    "block_shift_ar_edit": ["training.train_iters=6", "corruption.edit_stage_fraction=0.5",
                            "model.logit_shift=true", "attention.clean_stream=causal", "loss.ar_loss_weight=0.5",
                            "training.eval_interval=3", "training.eval_iters=1"],
    # bidirectional masked diffusion, isolated packing, sequence-normalised loss
    "bidirectional_isolated": ["training.train_iters=4", "attention.mode=bidirectional",
                               "attention.visibility=isolated", "loss.normalization=sequence"],
    # on-policy steps from a 2-step base model (ONPOLICY_BASE) with PROMPTS: sampling, the model
    # verifier and the KL anchor read the frozen reference, policy-gradient rows
    "onpolicy": ["training.train_iters=3", "data.seq_len=32", "onpolicy.max_new_tokens=12",
                 "onpolicy.prompts_per_step=2", "onpolicy.group_size=2", "onpolicy.threshold=0.004",
                 "onpolicy.verifier=model", "onpolicy.kl_weight=0.05", "optimizer.lr=0.01"],
}
COMPARED = {"28958da": ["bidirectional_isolated", "block_shift_ar_edit"],
            "f60b3b2": ["bidirectional_isolated", "block_shift_ar_edit", "onpolicy"]}
ONPOLICY_BASE = ["training.train_iters=2", "data.seq_len=32"]
ONPOLICY_SOURCE = ["training.step_source=onpolicy"]  # this checkout's; not f60b3b2's
PROMPTS = ["def add(a, b):\n", "def neg(a):\n", "def first(xs):\n", "def is_empty(xs):\n"]


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k in FIGURES} for line in lines]


def _train(root, store, run_dir, overrides, init_from=None):
    cmd = train_cmd(store, run_dir, *overrides)
    if init_from is not None:
        cmd[cmd.index("--resume"):cmd.index("--resume")] = ["--init-from", str(init_from)]
    proc = subprocess.run(cmd, cwd=root, env=dict(env(), PYTHONPATH=str(root)), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _records(run_dir)


def _run(name, root, store, run_dir: Path, *, ours: bool):
    """Run ``name`` with the code in ``root``; its records."""
    if name != "onpolicy":
        return _train(root, store, run_dir, RUNS[name])
    _train(root, store, run_dir / "base", ONPOLICY_BASE)
    prompts = run_dir / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    overrides = [f"onpolicy.prompts={prompts}", *RUNS[name], *(ONPOLICY_SOURCE if ours else [])]
    return _train(root, store, run_dir / "onpolicy", overrides, init_from=run_dir / "base")


def machine() -> dict:
    """What decides the floating-point bits of a CPU run: torch and the CPU."""
    cpu = [line for line in Path("/proc/cpuinfo").read_text().splitlines()
           if line.startswith(("model name", "flags"))][:2] if Path("/proc/cpuinfo").exists() else []
    return {"torch": torch.__version__, "machine": platform.machine(),
            "cpu": [line.split(":", 1)[1].strip() for line in cpu]}


def _reference_tree(commit, tmp_path_factory):
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        return None
    tree = tmp_path_factory.mktemp(f"reference-{commit}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def _record(runs: dict) -> None:
    saved = json.loads(RECORDED.read_text())
    for commit, records in runs.items():
        saved[commit] = {"machine": machine(), "runs": {**saved.get(commit, {}).get("runs", {}),
                                                        **records}}
    RECORDED.write_text(json.dumps(saved, indent=1) + "\n")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_store):
    """(commit, name) -> that commit's records: run now from git, else recorded on this machine."""
    trees, ran = {}, {}

    def records(commit, name):
        if commit not in trees:
            trees[commit] = _reference_tree(commit, tmp_path_factory)
        if trees[commit] is not None:
            out = _run(name, trees[commit], tiny_store, tmp_path_factory.mktemp(name), ours=False)
            ran.setdefault(commit, {})[name] = out
            return out
        recorded = json.loads(RECORDED.read_text()).get(commit)
        if recorded is None or recorded["machine"] != machine():
            pytest.skip(f"{commit} is not in this clone and {RECORDED.name} has no figures of it "
                        f"recorded on this machine ({machine()}): bits cannot be compared")
        return recorded["runs"][name]

    yield records
    wanted = os.environ.get("REFACTOR_REFERENCE_RECORD", "").split(",")
    if any(commit in wanted for commit in ran):
        _record({commit: runs for commit, runs in ran.items() if commit in wanted})


@pytest.fixture(scope="module")
def ours(tmp_path_factory, tiny_store):
    """name -> this checkout's records (each run trained once)."""
    done = {}

    def records(name):
        if name not in done:
            done[name] = _run(name, ROOT, tiny_store, tmp_path_factory.mktemp(f"ours-{name}"),
                              ours=True)
        return done[name]

    return records


@pytest.mark.parametrize("commit,name", [(c, n) for c in REFERENCES for n in COMPARED[c]],
                         ids=lambda v: v)
def test_losses_bit_identical_to_the_reference_commit(commit, name, reference, ours):
    mine = ours(name)
    assert len(mine) == int(RUNS[name][0].split("=")[1])
    assert mine == reference(commit, name), f"{name} differs from {commit} ({REFERENCES[commit]})"
