"""The load dispatcher: a checkpoint dir, a run dir (its latest) and an HF export each load as the
same model; a meta.json of another format, a missing path or a directory without a checkpoint is
a one-line UsageError; ``load_sampler`` checks its settings before it looks at the checkpoint."""

import json
import shutil

import pytest
import torch

from megatron_diffusion.loading.trained import load_model, load_sampler
from megatron_diffusion.convert.mcore_to_hf import convert_mcore_to_hf
from megatron_diffusion.errors import UsageError
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model import weights
from megatron_diffusion.sampling.config import SamplerConfig
from megatron_diffusion.sampling.result import GenerationResult
from megatron_diffusion.training.checkpoint import (
    CHECKPOINT_FORMAT,
    latest_checkpoint,
    read_meta,
)
from tests.helpers import make_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    make_checkpoint(run, attention=AttentionConfig(mode="block", block_size=4), num_layers=2)
    return run


@pytest.fixture(scope="module")
def native(run_dir):
    return load_model(latest_checkpoint(run_dir))


def _same_weights(a, b, vocab: int) -> None:
    want, got = weights.local_to_full([a.model]), weights.local_to_full([b.model])
    assert want.keys() == got.keys()
    for name in want:  # the padding rows of the vocabulary are not part of an export
        padded = name in ("embedding.word_embeddings.weight", "output_layer.weight")
        rows = slice(0, vocab) if padded else slice(None)
        assert torch.equal(want[name][rows], got[name][rows]), name


def test_checkpoint_dir(native, run_dir):
    ckpt = latest_checkpoint(run_dir)
    assert native.path == ckpt and native.meta == read_meta(ckpt)
    assert native.config.attention.mode == "block" and native.config.attention.block_size == 4
    assert native.tokenizer_path == str(ckpt / "tokenizer.json")
    assert not native.model.training


@pytest.mark.parametrize("where", ["run", "checkpoints"])
def test_run_dir_loads_its_latest(native, run_dir, where):
    loaded = load_model(run_dir if where == "run" else run_dir / "checkpoints")
    assert loaded.path == native.path
    _same_weights(native, loaded, native.config.model.vocab_size)


def test_hf_export(native, run_dir, tmp_path):
    export = tmp_path / "export"
    convert_mcore_to_hf(run_dir, export, progress=False)
    loaded = load_model(export)
    assert loaded.path == export and loaded.tokenizer_path == str(export / "tokenizer.json")
    assert loaded.config.to_dict() == native.config.to_dict()
    assert loaded.meta["format"] == CHECKPOINT_FORMAT and loaded.meta["step"] == 0
    _same_weights(native, loaded, native.config.model.vocab_size)


def _one_line_error(path, match: str) -> None:
    with pytest.raises(UsageError, match=match) as e:
        load_model(path)
    assert len(str(e.value).splitlines()) == 1, str(e.value)


@pytest.mark.parametrize("field,value,match", [
    ("format", "hf-llama", "has format 'hf-llama', expected 'megatron-diffusion-checkpoint'"),
    ("format", None, "has format None"),
    ("format_version", 2, "format_version 2; this megatron-diffusion reads version 1"),
])
def test_wrong_format_meta(run_dir, tmp_path, field, value, match):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(latest_checkpoint(run_dir), ckpt)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta[field] = value
    (ckpt / "meta.json").write_text(json.dumps(meta))
    _one_line_error(ckpt, match)


def test_not_a_checkpoint(tmp_path):
    _one_line_error(tmp_path / "missing", "--checkpoint: .* does not exist")
    _one_line_error(tmp_path, "not a megatron-diffusion checkpoint .*nor a run directory")


def test_load_sampler_contract(run_dir):
    sampler = load_sampler(run_dir, max_new_tokens=10, threshold=0.5, seed=3)
    for key in ("max_new_tokens", "block_size", "strategy", "steps_per_block", "threshold",
                "temperature", "seed", "kv_cache", "self_correct", "batch_size"):
        assert key in sampler.settings
    assert sampler.settings["block_size"] == 4  # the training block size by default
    assert sampler.settings["threshold"] == 0.5 and sampler.settings["seed"] == 3
    out = sampler.complete(["def add(a, b):\n", "import os"])
    assert len(out) == 2 and all(isinstance(r, GenerationResult) for r in out)
    assert all(1 <= r.num_tokens <= 10 and r.num_forwards >= 1 and r.seconds > 0 for r in out)


def test_load_sampler_config_and_knobs(run_dir):
    """A ``SamplerConfig`` (the CLI's) with knobs on top; both checked before any loading."""
    sampler = load_sampler(run_dir, SamplerConfig(max_new_tokens=6, threshold=0.7), seed=5)
    assert sampler.settings["max_new_tokens"] == 6 and sampler.settings["threshold"] == 0.7
    assert sampler.settings["seed"] == 5
    missing = run_dir / "missing"  # never reached: the settings fail first
    with pytest.raises(UsageError, match="unknown setting"):
        load_sampler(missing, beam_width=4)
    with pytest.raises(UsageError, match="--threshold: got 2"):
        load_sampler(missing, SamplerConfig(threshold=2))
    with pytest.raises(UsageError, match="--max-new-tokens: got 0"):
        load_sampler(missing, SamplerConfig(), max_new_tokens=0)
