"""HF -> mcore -> (reshard TP=2, PP=2) -> HF is bit-identical; the export loads in transformers."""

import json
from pathlib import Path

import pytest
import torch

from megatron_diffusion.convert.hf_to_mcore import convert_hf_to_mcore
from megatron_diffusion.convert.mcore_to_hf import convert_mcore_to_hf
from megatron_diffusion.convert.verify import verify
from megatron_diffusion.training.checkpoint import latest_checkpoint, read_meta
from tests.convert.hf_fixtures import hf_state, make_hf_model
from tests.helpers import torchrun


def _assert_original_weights_identical(original_dir, export_dir):
    original, exported = hf_state(original_dir), hf_state(export_dir)
    assert set(original) == set(exported)
    for name, t in original.items():
        got = exported[name]
        assert got.dtype == t.dtype, name
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            got = got[: t.shape[0]]  # rows past the HF vocabulary are added tokens
        assert torch.equal(got, t), name


@pytest.mark.distributed
def test_tp2_pp2_round_trip_is_bit_identical(hf_llama, mc_llama, hf_qwen2, mc_qwen2, hf_qwen3,
                                             mc_qwen3, tmp_path):
    """Llama (untied, [MASK] row added), Qwen2 (tied over two pipeline stages, QKV bias,
    [MASK] in a spare row) and Qwen3 (tied, q/k norms replicated over TP, head_dim 32 of width
    64): loaded and saved by 4 ranks, exported by one."""
    cases = {"llama": (hf_llama, mc_llama), "qwen2": (hf_qwen2, mc_qwen2),
             "qwen3": (hf_qwen3, mc_qwen3)}
    args = [str(p) for arch, (_, mc) in cases.items() for p in (mc, tmp_path / f"{arch}_tp2pp2")]
    torchrun(str(Path(__file__).with_name("reshard_worker.py")), 4, *args)
    for arch, (hf, _) in cases.items():
        sharded = tmp_path / f"{arch}_tp2pp2"
        ckpt = latest_checkpoint(sharded)
        assert len(list((ckpt / "model_optim").glob("__*_0.distcp"))) == 4  # 4 ranks wrote
        parallel = read_meta(ckpt)["config"]["parallel"]
        assert (parallel["tensor_model_parallel_size"],
                parallel["pipeline_model_parallel_size"]) == (2, 2)
        back = tmp_path / f"{arch}_back"
        convert_mcore_to_hf(sharded, back, progress=False, max_shard_bytes=100_000)
        _assert_original_weights_identical(hf, back)
        assert verify(hf, sharded, seq_len=16, tolerance=1e-4).passed


def test_reshard_from_one_process_launches_tp_times_pp_ranks(mc_llama, tmp_path, monkeypatch):
    import subprocess

    from megatron_diffusion.convert import reshard as reshard_module

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(subprocess, "run", lambda cmd, env, check: seen.update(cmd=cmd, env=env)
                        or subprocess.CompletedProcess(cmd, 0))
    out = tmp_path / "out"
    assert reshard_module.reshard(mc_llama, out, tensor_model_parallel_size=2,
                                  pipeline_model_parallel_size=2, force=True) == 0
    cmd = seen["cmd"]
    assert "--nproc-per-node=4" in cmd and cmd[cmd.index("-m", 3):][:4] == [
        "-m", "megatron_diffusion.cli", "convert", "reshard"]
    assert cmd[-7:] == ["--out", str(out.absolute()), "--tp", "2", "--pp", "2", "--force"][-7:]
    assert str(reshard_module.PACKAGE_ROOT) in seen["env"]["PYTHONPATH"]


def test_bf16_round_trip_and_transformers_loads_the_export(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = make_hf_model(tmp_path / "hf", "llama", tied=True, dtype=torch.bfloat16, num_layers=2)
    mc, back = tmp_path / "mc", tmp_path / "back"
    convert_hf_to_mcore(hf, mc, add_mask_token=True, progress=False)
    assert read_meta(latest_checkpoint(mc))["config"]["model"]["params_dtype"] == "bfloat16"
    convert_mcore_to_hf(mc, back, progress=False)
    _assert_original_weights_identical(hf, back)

    config = json.loads((back / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 301
    assert config["diffusion"]["mask_token_id"] == 300
    assert config["diffusion"]["attention_mode"] == "causal"
    assert config["bos_token_id"] == 0  # kept from the original config
    model = AutoModelForCausalLM.from_pretrained(back)
    tok = AutoTokenizer.from_pretrained(back)
    assert tok.mask_token == "[MASK]" and tok.mask_token_id == 300 and tok.eos_token_id == 1
    assert model.get_input_embeddings().weight.shape == (301, 64)
    ids = tok("def f(x):\n    return x", return_tensors="pt").input_ids
    reference = AutoModelForCausalLM.from_pretrained(hf)
    with torch.no_grad():  # original vocabulary: the same AR model
        assert torch.equal(model(ids).logits[..., :300], reference(ids).logits)
    assert "diffusion" in (back / "README.md").read_text()


def test_qwen3_export_is_a_qwen3_transformers_runs(hf_qwen3, mc_qwen3, tmp_path):
    from transformers import AutoModelForCausalLM

    back = tmp_path / "back"
    convert_mcore_to_hf(mc_qwen3, back, progress=False)
    _assert_original_weights_identical(hf_qwen3, back)
    config = json.loads((back / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["model_type"] == "qwen3"
    assert (config["head_dim"], config["attention_bias"], config["use_sliding_window"]) == (
        32, False, False)
    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(back)(ids).logits[..., :320]
        want = AutoModelForCausalLM.from_pretrained(hf_qwen3)(ids).logits
    assert torch.equal(got, want)
