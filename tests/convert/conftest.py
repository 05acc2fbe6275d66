"""Tiny HF models and their conversions, built once per test session (megatron import ~5 s)."""

import pytest

from tests.convert.hf_fixtures import make_hf_model


@pytest.fixture(scope="session")
def hf_llama(tmp_path_factory):
    """LlamaForCausalLM, untied, GQA 4/2, eos '</s>', no [MASK], 300 rows, sharded files."""
    return make_hf_model(tmp_path_factory.mktemp("hf") / "llama", "llama", tied=False,
                         max_shard_size="60KB")


@pytest.fixture(scope="session")
def hf_qwen2(tmp_path_factory):
    """Qwen2ForCausalLM, tied, QKV bias, eos '<|endoftext|>', 320 rows for 300 tokens."""
    return make_hf_model(tmp_path_factory.mktemp("hf") / "qwen2", "qwen2", tied=True,
                         vocab_rows=320)


@pytest.fixture(scope="session")
def hf_qwen3(tmp_path_factory):
    """Qwen3ForCausalLM, tied (as Qwen3-0.6B/1.7B/4B), q/k norms, head_dim 32 != 64 / 4 heads,
    GQA 4/2, eos '<|endoftext|>', 320 rows for 300 tokens."""
    return make_hf_model(tmp_path_factory.mktemp("hf") / "qwen3", "qwen3", tied=True,
                         vocab_rows=320, head_dim=32)


@pytest.fixture(scope="session")
def mc_llama(hf_llama, tmp_path_factory):
    from megatron_diffusion.convert.hf_to_mcore import convert_hf_to_mcore

    out = tmp_path_factory.mktemp("mc") / "llama"
    convert_hf_to_mcore(hf_llama, out, add_mask_token=True, progress=False)
    return out


@pytest.fixture(scope="session")
def mc_qwen2(hf_qwen2, tmp_path_factory):
    from megatron_diffusion.convert.hf_to_mcore import convert_hf_to_mcore

    out = tmp_path_factory.mktemp("mc") / "qwen2"
    convert_hf_to_mcore(hf_qwen2, out, tensor_model_parallel_size=2, add_mask_token=True,
                        progress=False)
    return out


@pytest.fixture(scope="session")
def mc_qwen3(hf_qwen3, tmp_path_factory):
    from megatron_diffusion.convert.hf_to_mcore import convert_hf_to_mcore

    out = tmp_path_factory.mktemp("mc") / "qwen3"
    convert_hf_to_mcore(hf_qwen3, out, add_mask_token=True, progress=False)
    return out
