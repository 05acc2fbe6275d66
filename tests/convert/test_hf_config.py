"""config.json in both spellings: transformers 5 (``rope_parameters``) and 4.x (``rope_theta``)."""

import pytest

from megatron_diffusion.convert.hf_config import parse_hf_config
from megatron_diffusion.errors import UsageError

BASE = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96,
        "vocab_size": 300, "rms_norm_eps": 1e-5}


@pytest.mark.parametrize("rope", [
    {"rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}},  # transformers 5
    {"rope_theta": 100000.0},  # transformers 4.x
    {"rope_theta": 100000.0, "rope_scaling": None},
    {"rope_parameters": {"rope_theta": 100000.0}},  # rope_type omitted: default
])
def test_rope_theta_from_either_layout(rope):
    assert parse_hf_config({**BASE, **rope}).rope_theta == 100000.0


def test_no_rope_keys_is_the_llama_default():
    assert parse_hf_config(dict(BASE)).rope_theta == 10000.0


@pytest.mark.parametrize("rope,message", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}},
     "rope_parameters.rope_type='yarn'"),
    ({"rope_theta": 1e6, "rope_scaling": {"type": "linear", "factor": 2.0}},
     "rope_scaling.rope_type='linear'"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                          "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
])
def test_rope_types_other_than_default_are_refused_by_name(rope, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse_hf_config({**BASE, **rope})


QWEN3 = {**BASE, "architectures": ["Qwen3ForCausalLM"], "head_dim": 32,
         "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28,
         "layer_types": ["full_attention"] * 2}


def test_qwen3_has_qk_norms_its_own_head_width_and_no_bias():
    hf = parse_hf_config(dict(QWEN3))
    assert (hf.qk_norm, hf.qkv_bias, hf.head_dim) == (True, False, 32)
    without = {k: v for k, v in QWEN3.items() if k != "head_dim"}
    assert parse_hf_config(without).head_dim == 128  # transformers' Qwen3Config default
    assert parse_hf_config({**BASE, "architectures": ["Qwen2ForCausalLM"]}).head_dim == 16
    assert not parse_hf_config(dict(BASE)).qk_norm


@pytest.mark.parametrize("changes,message", [
    ({"architectures": ["Qwen3MoeForCausalLM"], "num_experts": 8},
     "architecture 'Qwen3MoeForCausalLM' (mixture of experts) is not supported"),
    ({"use_sliding_window": True, "sliding_window": 4096}, "use_sliding_window=true"),
    ({"layer_types": ["full_attention", "sliding_attention"]},
     "layer_types has 'sliding_attention' layers"),
    ({"attention_bias": True}, "attention_bias=true"),
])
def test_qwen3_variants_we_do_not_model_are_refused_by_name(changes, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_hf_config({**QWEN3, **changes})
