"""Bad input fails early with one line naming the problem, and leaves nothing behind."""

import json
import shutil

import pytest

from megatron_diffusion import cli
from megatron_diffusion.convert.hf_to_mcore import convert_hf_to_mcore
from megatron_diffusion.errors import UsageError
from tests.convert.hf_fixtures import make_hf_model


def _copy(src, tmp_path, name="hf"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _edit_config(hf_dir, **changes):
    config = json.loads((hf_dir / "config.json").read_text())
    config.update(changes)
    (hf_dir / "config.json").write_text(json.dumps(config))


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_unsupported_architecture_is_named_with_the_supported_ones(hf_llama, tmp_path):
    hf = _copy(hf_llama, tmp_path)
    _edit_config(hf, architectures=["MistralForCausalLM"])
    with pytest.raises(UsageError, match="'MistralForCausalLM' is not supported; supported "
                                         "architectures: LlamaForCausalLM, Qwen2ForCausalLM, "
                                         "Qwen3ForCausalLM"):
        convert_hf_to_mcore(hf, tmp_path / "out", add_mask_token=True)


@pytest.mark.parametrize("changes,message", [
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
     "rope_type='llama3'"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
])
def test_features_we_do_not_model_are_refused(hf_llama, tmp_path, changes, message):
    hf = _copy(hf_llama, tmp_path)
    _edit_config(hf, **changes)
    with pytest.raises(UsageError, match=message):
        convert_hf_to_mcore(hf, tmp_path / "out", add_mask_token=True)


def test_missing_shard_file(hf_llama, tmp_path):
    hf = _copy(hf_llama, tmp_path)
    shard = sorted(hf.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(UsageError, match=f"shard file .*{shard.name}.* is missing"):
        convert_hf_to_mcore(hf, tmp_path / "out", add_mask_token=True)


def test_shape_mismatch_names_the_tensor(hf_llama, tmp_path):
    hf = _copy(hf_llama, tmp_path)
    _edit_config(hf, intermediate_size=128)
    with pytest.raises(UsageError, match=r"'model.layers.0.mlp.gate_proj.weight' in .* has shape "
                                         r"\[96, 64\], expected \[128, 64\]"):
        convert_hf_to_mcore(hf, tmp_path / "out", add_mask_token=True)


def test_tp_must_divide_heads_and_pp_the_layers(hf_llama, tmp_path):
    with pytest.raises(UsageError, match="--tp: 4 does not divide .*num_key_value_heads=2"):
        convert_hf_to_mcore(hf_llama, tmp_path / "out", add_mask_token=True,
                            tensor_model_parallel_size=4)
    with pytest.raises(UsageError, match="--pp: 3 does not divide num_hidden_layers=4"):
        convert_hf_to_mcore(hf_llama, tmp_path / "out", add_mask_token=True,
                            pipeline_model_parallel_size=3)
    assert not (tmp_path / "out").exists()


def test_mask_token_required_unless_added(hf_llama, tmp_path):
    with pytest.raises(UsageError, match=r"has no \[MASK\] token; pass --add-mask-token"):
        convert_hf_to_mcore(hf_llama, tmp_path / "out")


def test_non_empty_output_refused_unless_force(hf_qwen2, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(UsageError, match="--out: .* is not empty; pass --force"):
        convert_hf_to_mcore(hf_qwen2, out, add_mask_token=True)
    assert (out / "keep.txt").read_text() == "old"
    convert_hf_to_mcore(hf_qwen2, out, add_mask_token=True, force=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "checkpoints" / "latest").is_file()
    assert _leftovers(tmp_path) == []


def test_failure_mid_conversion_leaves_nothing(hf_llama, tmp_path):
    hf = _copy(hf_llama, tmp_path)
    last = sorted(hf.glob("model-*.safetensors"))[-1]
    last.write_bytes(last.read_bytes()[:-16])  # header intact, data cut: found while reading
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("old")
    for out, force in ((tmp_path / "new", False), (old, True)):
        with pytest.raises(UsageError, match="truncated"):
            convert_hf_to_mcore(hf, out, add_mask_token=True, force=force, progress=False)
    assert not (tmp_path / "new").exists()
    assert (old / "keep.txt").read_text() == "old"  # --force replaces only on success
    assert _leftovers(tmp_path) == []


def test_cli_reports_one_line_and_exit_codes(hf_llama, mc_llama, tmp_path, capsys):
    rc = cli.main(["convert", "hf-to-mcore", "--hf", str(tmp_path / "nope"),
                   "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("megatron-diffusion convert: error: --hf:")

    assert cli.main(["convert", "verify", "--hf", str(hf_llama), "--checkpoint", str(mc_llama),
                     "--seq-len", "8", "--tolerance", "1e-4"]) == 0
    assert "max |logit diff|" in capsys.readouterr().out
    other = make_hf_model(tmp_path / "other", "llama", tied=False, seed=7, num_layers=4)
    assert cli.main(["convert", "verify", "--hf", str(other), "--checkpoint", str(mc_llama),
                     "--seq-len", "8"]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("changes,message", [
    ({"architectures": ["Qwen3MoeForCausalLM"], "num_experts": 8, "num_experts_per_tok": 2},
     "architecture 'Qwen3MoeForCausalLM' (mixture of experts) is not supported"),
    ({"use_sliding_window": True, "sliding_window": 64}, "use_sliding_window=true"),
    ({"layer_types": ["full_attention"] * 3 + ["sliding_attention"]},
     "layer_types has 'sliding_attention' layers"),
])
def test_qwen3_moe_and_sliding_window_are_one_line_exit_2(hf_qwen3, tmp_path, capsys, changes,
                                                          message):
    hf = _copy(hf_qwen3, tmp_path)
    _edit_config(hf, **changes)
    rc = cli.main(["convert", "hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "out"),
                   "--add-mask-token", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"megatron-diffusion convert: error: {hf / 'config.json'}: ")
    assert message in err
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("changes,message", [
    ({"architectures": ["Qwen3ForCausalLM"]},
     "config.json is a Qwen3ForCausalLM (q/k norms: True) but the checkpoint's model has "
     "model.qk_layernorm=False"),
    ({"head_dim": 32}, "config.json head_dim=32 but the checkpoint's model has 16"),
])
def test_verify_refuses_another_architecture_by_name(hf_llama, mc_llama, tmp_path, changes,
                                                     message):
    from megatron_diffusion.convert.verify import verify

    hf = _copy(hf_llama, tmp_path)
    _edit_config(hf, **changes)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        verify(hf, mc_llama, seq_len=8)
