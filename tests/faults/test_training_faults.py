"""Training-time faults: a non-finite gradient or weight, a tokenizer that does not match the
store, a store without validation documents."""

import math
import textwrap
from pathlib import Path

import pytest

from tests.faults.conftest import json_store, run_cli
from tests.helpers import ROOT, make_tokenizer
from tests.training.conftest import losses

# Installed through PYTHONPATH as sitecustomize: wraps forward_backward so that after the
# FAULT_STEP-th training forward/backward one gradient element (or weight) is non-finite while
# the loss stays finite. It patches from outside, so it works on the code before the fix too.
POISON = textwrap.dedent('''
    import os, torch
    import megatron_diffusion.training.forward_backward as step_mod
    _orig, _calls = step_mod.forward_backward, [0]
    def forward_backward(chunks, microbatches, *args, **kwargs):
        res = _orig(chunks, microbatches, *args, **kwargs)
        if not kwargs.get("forward_only"):
            _calls[0] += 1
            if _calls[0] == int(os.environ["FAULT_STEP"]):
                p = next(chunks[0].parameters())
                with torch.no_grad():
                    if os.environ["FAULT_KIND"] == "grad":
                        p.main_grad.view(-1)[0] = float("nan")
                    else:
                        p.data.view(-1)[0] = float("inf")
        return res
    step_mod.forward_backward = forward_backward
''')


def _poisoned_env(tmp_path, kind, step):
    d = tmp_path / "poison"
    d.mkdir()
    (d / "sitecustomize.py").write_text(POISON)
    return {"PYTHONPATH": f"{d}:{ROOT}", "FAULT_KIND": kind, "FAULT_STEP": str(step)}


def _checkpoint_tensors(ckpt: Path) -> dict:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    import torch

    out = ckpt.parent.parent.parent / f"{ckpt.name}.pt"
    dcp_to_torch_save(str(ckpt / "model_optim"), str(out))
    flat = {}

    def walk(prefix, obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)
        elif torch.is_tensor(obj) and obj.is_floating_point():
            flat[prefix] = obj

    walk("", torch.load(out, weights_only=False))
    return flat


SAVE_EVERY_STEP = ["training.train_iters=5", "training.save_interval=1", "training.keep_last=1"]


def test_nan_gradient_with_finite_loss_skips_the_step(tiny_store, tmp_path):
    run = tmp_path / "run"  # with the store's own tokenizer named: accepted, and shipped
    proc = run_cli(tiny_store, run, *SAVE_EVERY_STEP, f"training.tokenizer={tiny_store / 'tokenizer.json'}",
                   extra_env=_poisoned_env(tmp_path, "grad", 3))
    assert "step 3: non-finite gradient" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    got = losses(run)
    assert sorted(got) == [1, 2, 4, 5] and all(math.isfinite(v) for v in got.values())
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert latest.name == "iter_0000005" and (latest / "tokenizer.json").is_file()
    tensors = _checkpoint_tensors(latest)
    assert tensors and all(bool(t.isfinite().all()) for t in tensors.values())


def test_non_finite_weights_are_never_saved_over_the_last_good_checkpoint(tiny_store, tmp_path):
    run = tmp_path / "run"
    proc = run_cli(tiny_store, run, *SAVE_EVERY_STEP, check=False,
                   extra_env=_poisoned_env(tmp_path, "weight", 3))
    assert proc.returncode != 0
    assert "non-finite weights" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "iter_0000002"
    assert sorted(p.name for p in ckpts.iterdir()) == ["iter_0000002", "latest"]
    tensors = _checkpoint_tensors(ckpts / "iter_0000002")
    assert tensors and all(bool(t.isfinite().all()) for t in tensors.values())


def test_tokenizer_that_does_not_match_the_store_is_refused_at_config_time(tiny_store, tmp_path):
    other = make_tokenizer(tmp_path / "other.json", 280)
    run = tmp_path / "run"
    proc = run_cli(tiny_store, run, "training.train_iters=2", f"training.tokenizer={other}",
                   check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "training.tokenizer" in err[0] and str(tiny_store) in err[0], err
    assert not run.exists()


@pytest.fixture
def two_token_store(tmp_path):
    """A store of one document: one token and its EOS."""
    from megatron_diffusion.data.ingest import IngestConfig, preprocess

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("a")
    tok = make_tokenizer(tmp_path / "tokenizer.json", 300)
    preprocess(IngestConfig(inputs=[str(tmp_path / "src")], output=str(tmp_path / "two.zarr"),
                            tokenizer=str(tok), glob="*.py", validation_fraction=0.0))
    return tmp_path / "two.zarr"


def test_a_store_too_small_for_one_row_is_refused_before_the_run_dir_is_written(two_token_store,
                                                                                 tmp_path):
    # a new run dir, and an empty one made beforehand (as slurm/pretrain.sbatch makes it)
    for run, made_before in ((tmp_path / "new", False), (tmp_path / "made", True)):
        if made_before:
            run.mkdir()
        proc = run_cli(two_token_store, run, "training.train_iters=2", check=False)
        assert proc.returncode == 2, proc.stderr[-3000:]
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and str(two_token_store) in err[0] and "fewer than one row" in err[0], err
        assert run.exists() == made_before  # before: config.yaml, snapshots/ (and .lock) in it
        assert not made_before or not list(run.iterdir()), list(run.iterdir())


@pytest.fixture
def store_without_validation(tmp_path):
    return json_store(tmp_path, "noval.zarr", validation_fraction=0.0)


def test_no_validation_documents_is_found_at_setup(store_without_validation, tmp_path):
    run = tmp_path / "run"
    proc = run_cli(store_without_validation, run, "training.train_iters=3",
                   "training.eval_interval=2", "training.eval_iters=1", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "validation" in err[0] and "eval_interval" in err[0], err
    assert not run.exists()  # before any step, before the run dir is written


def test_no_validation_documents_is_fine_without_evaluation(store_without_validation, tmp_path):
    run_cli(store_without_validation, tmp_path / "run", "training.train_iters=1")


def test_a_diverged_run_stops_with_one_line_and_keeps_its_last_checkpoint(tiny_store, tmp_path):
    run = tmp_path / "run"  # step 1 is finite and saved; its update (lr 1e9) makes every later loss NaN
    proc = run_cli(tiny_store, run, "training.train_iters=20", "training.save_interval=1",
                   "optimizer.lr=1e9", "training.max_nan_steps=2", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(err) == 1, proc.stderr[-3000:]
    assert "training stopped: 3 consecutive non-finite steps" in err[0], err
    assert "steps 2-4" in err[0] and "optimizer.lr" in err[0], err
    assert sorted(losses(run)) == [1]
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "iter_0000001"
    assert sorted(p.name for p in ckpts.iterdir()) == ["iter_0000001", "latest"]
    tensors = _checkpoint_tensors(ckpts / "iter_0000001")
    assert tensors and all(bool(t.isfinite().all()) for t in tensors.values())
