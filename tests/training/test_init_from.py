"""``--init-from`` takes the architecture from the checkpoint and carries its generation config.

The source checkpoint plays a converted SmolLM2: RoPE base 1e5, RMSNorm eps 1e-5 (not the
defaults 1e4 / 1e-6), and a ``generation`` key in meta.json as conversion writes it. The CPT
config has no ``model`` section at all, as a user's CPT config would.
"""

import json
import subprocess
import sys

import pytest
import yaml

from tests.helpers import ROOT, rewrite_meta
from tests.training.conftest import TINY, env, run_train

pytestmark = pytest.mark.slow
ARCH = ["model.rotary_base=100000.0", "model.norm_epsilon=1.0e-5",
        "model.max_position_embeddings=128"]
GENERATION = {"stop_token_ids": [0, 2], "chat_template": "{{ messages }}"}


@pytest.fixture(scope="module")
def source(tiny_store, tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    run_train(tiny_store, src, "training.train_iters=1", *ARCH)
    ckpt = src / "checkpoints" / "iter_0000001"
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["generation"] = GENERATION  # what conversion writes
    rewrite_meta(ckpt, meta)
    return ckpt


@pytest.fixture(scope="module")
def cpt_config(tmp_path_factory):
    cfg = yaml.safe_load((ROOT / "examples" / "cpu_demo.yaml").read_text())
    del cfg["model"]
    path = tmp_path_factory.mktemp("cfg") / "cpt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cpt(store, config, run_dir, init_from, *overrides):
    not_model = [o for o in TINY if not o.startswith("model.")]
    cmd = [sys.executable, "-m", "megatron_diffusion.cli", "train", "--config", str(config),
           "--run-dir", str(run_dir), "--init-from", str(init_from), f"data.blend=[[1.0, {store}]]", *not_model,
           "training.train_iters=1", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)


def test_architecture_and_generation_come_from_the_checkpoint(tiny_store, source, cpt_config,
                                                              tmp_path):
    run = tmp_path / "run"
    proc = cpt(tiny_store, cpt_config, run, source)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((run / "checkpoints" / "iter_0000001" / "meta.json").read_text())
    model = meta["config"]["model"]
    assert model["rotary_base"] == 100000.0 and model["norm_epsilon"] == pytest.approx(1e-5)
    assert model["max_position_embeddings"] == 128
    assert (model["num_layers"], model["hidden_size"], model["num_query_groups"]) == (2, 32, 2)
    assert meta["generation"] == GENERATION
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["rotary_base"] == 100000.0


def test_an_explicit_difference_is_refused_by_name(tiny_store, source, cpt_config, tmp_path):
    run = tmp_path / "run"
    # 10000.0 is also the default: what counts is that the run sets it
    proc = cpt(tiny_store, cpt_config, run, source, "model.rotary_base=10000.0")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err[-3000:]
    assert "model.rotary_base=100000.0" in err and "10000.0" in err
    assert not run.exists()


@pytest.fixture(scope="module")
def converted_qwen3(tmp_path_factory):
    """A tiny random Qwen3 (q/k norms, head_dim 32 of width 64, 320 embedding rows for a
    tokenizer of 300 + [MASK], tied) converted, and a store tokenized with its tokenizer."""
    import sysconfig

    from megatron_diffusion.convert.hf_to_mcore import convert_hf_to_mcore
    from megatron_diffusion.data.ingest import IngestConfig, preprocess
    from tests.convert.hf_fixtures import make_hf_model

    root = tmp_path_factory.mktemp("qwen3")
    hf = make_hf_model(root / "hf", "qwen3", tied=True, vocab_rows=320, head_dim=32,
                       num_layers=2)
    convert_hf_to_mcore(hf, root / "mc", add_mask_token=True, progress=False)
    lib = sysconfig.get_paths()["stdlib"]
    preprocess(IngestConfig(inputs=[f"{lib}/json"], output=str(root / "s.zarr"),
                            tokenizer=str(root / "mc" / "tokenizer.json"), glob="*.py",
                            validation_fraction=0.1))
    return hf, root / "mc", root / "s.zarr"


def test_a_converted_qwen3_trains_with_its_norms_and_spare_rows(converted_qwen3, cpt_config,
                                                                tmp_path):
    """The store's vocabulary (301 tokens) is smaller than the checkpoint's (320 rows, as every
    Qwen pads its embedding): the run takes the checkpoint's; the q/k norms are loaded."""
    from megatron_diffusion.loading.trained import load_model
    from megatron_diffusion.model import weights
    from tests.convert.hf_fixtures import hf_state

    hf, mc, store = converted_qwen3
    run = tmp_path / "run"
    proc = cpt(store, cpt_config, run, mc, "training.train_iters=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = json.loads((run / "checkpoints" / "iter_0000002" / "meta.json").read_text())[
        "config"]["model"]
    assert (model["qk_layernorm"], model["kv_channels"], model["vocab_size"]) == (True, 32, 320)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["ce"] < 10 for r in records)

    full = weights.local_to_full([load_model(run).model])
    source = hf_state(hf)["model.layers.1.self_attn.q_norm.weight"]
    trained = full["decoder.layers.1.self_attention.q_layernorm.weight"]
    assert (source - 1).abs().max() > 0.1  # the fixture's norms are not megatron's initial ones
    assert (trained - source).abs().max() < 0.01  # two Adam steps of lr 2e-3 from the source
