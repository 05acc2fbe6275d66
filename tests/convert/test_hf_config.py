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
