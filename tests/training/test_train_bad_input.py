"""Bad configs, stores and checkpoints fail with one line, exit 2, nothing written."""

import pytest

from tests.helpers import ROOT, make_checkpoint
from tests.training.conftest import TINY, run_train

CFG = str(ROOT / "examples" / "cpu_demo.yaml")


def _main(args, capsys):
    from megatron_diffusion.cli import main

    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("override,needle", [
    ("model.num_layerz=2", "model.num_layerz"),
    ("model.num_layers=two", "model.num_layers"),
    ("attention.block_size=5", "block_size"),
    ("attention.mode=sideways", "attention.mode"),
    ("parallel.tensor_model_parallel_size=3", "tensor_model_parallel_size"),
    ("training.wandb=off", "quote"),
    ("optimizer.lr_decay_style=zigzag", "optimizer.lr_decay_style"),
    ("training.step_source=rollouts", "training.step_source: got 'rollouts'"),
    ("training.step_source=onpolicy", "step_source: 'onpolicy' needs the onpolicy section"),
    ("onpolicy.group_size=2", "training.step_source: got 'corpus', but the config has"),
])
def test_bad_config_values(override, needle, tiny_store, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = _main(["train", "--config", CFG, "--run-dir", str(run),
                       f"data.blend=[[1.0, {tiny_store}]]", *TINY, override], capsys)
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not run.exists()


def test_missing_config_file(tmp_path, capsys):
    code, err = _main(["train", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "nope.yaml" in err


def test_store_vocab_mismatch(tiny_store, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = _main(["train", "--config", CFG, "--run-dir", str(run),
                       f"data.blend=[[1.0, {tiny_store}]]", *TINY, "model.vocab_size=999",
                       "model.mask_token_id=1"], capsys)
    assert code == 2 and "vocab_size" in err and "s.zarr" in err
    assert not run.exists()


def test_incompatible_checkpoint_shape(tiny_store, tmp_path):
    other = make_checkpoint(tmp_path / "other", tokenizer_vocab=300)  # hidden 64, not 32
    run = tmp_path / "run"
    proc = run_train(tiny_store, run, "training.train_iters=2", "--init-from", str(other), check=False)
    assert proc.returncode == 2
    assert "--init-from" in proc.stderr and "has model.num_layers=4" in proc.stderr
    assert not run.exists()
