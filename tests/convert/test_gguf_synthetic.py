"""gguf-to-mcore on tiny GGUFs written here: the RoPE permutation, dequantisation, the tensor
mapping, the tokenizer and the stop tokens, against the source weights and transformers' own GGUF
loader (fast; the real model is in test_gguf_parity.py)."""

import json

import numpy as np
import pytest
import torch

from megatron_diffusion.convert.gguf_file import unpermute_rope_rows
from megatron_diffusion.convert.gguf_to_mcore import convert_gguf_to_mcore
from megatron_diffusion.convert.tensor_map import fuse_qkv
from megatron_diffusion.data.tokenizer import load_tokenizer
from megatron_diffusion.training.checkpoint import latest_checkpoint, read_meta
from tests.convert.gguf_fixtures import dequantised_source, llama_cpp_permute, write_gguf
from tests.convert.hf_fixtures import hf_state, make_hf_model
from tests.helpers import stdlib_texts

CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def causal_logits(model, ids_BL: torch.Tensor) -> torch.Tensor:
    from megatron_diffusion.masks.config import AttentionConfig
    from megatron_diffusion.masks.dense import attention_allowed, to_megatron_mask

    mask = to_megatron_mask(attention_allowed(AttentionConfig(mode="causal"),
                                              torch.zeros_like(ids_BL)))
    positions = torch.arange(ids_BL.shape[1]).expand_as(ids_BL)
    with torch.no_grad():
        return model(ids_BL, positions, mask).float()


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(2 * 8 * 3, dtype=np.float32).reshape(16, 3)  # 2 heads of width 8
    permuted = llama_cpp_permute(w, 2)
    assert not np.array_equal(permuted, w)
    # GGML interleaved rows: pairs (0, 4), (1, 5), ... of each head become adjacent
    assert np.array_equal(permuted[:2], w[[0, 4]])
    assert np.array_equal(unpermute_rope_rows(permuted, 2), w)


@pytest.fixture(scope="session")
def hf_chat_llama(tmp_path_factory):
    """Untied Llama, GQA 4/2, an Instruct-style tokenizer (eos '<|im_end|>')."""
    return make_hf_model(tmp_path_factory.mktemp("hf") / "chat-llama", "llama", tied=False,
                         special=CHAT_SPECIALS)


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_llama_gguf_weights_and_logits(hf_chat_llama, tmp_path, qtype):
    from transformers import AutoModelForCausalLM

    from megatron_diffusion.model import weights
    from megatron_diffusion.loading.trained import load_model

    gguf = write_gguf(hf_chat_llama, tmp_path / f"m-{qtype}.gguf", qtype=qtype)
    out = tmp_path / "mc"
    convert_gguf_to_mcore(gguf, out, add_mask_token=True, progress=False)
    loaded = load_model(out)
    full = weights.local_to_full([loaded.model])
    src = dequantised_source(hf_chat_llama, qtype)
    att = "model.layers.1.self_attn."
    expected_qkv = fuse_qkv(*(src[f"{att}{p}_proj.weight"] for p in "qkv"), 2)
    assert torch.equal(full["decoder.layers.1.self_attention.linear_qkv.weight"], expected_qkv)
    assert torch.equal(full["output_layer.weight"][:300], src["lm_head.weight"])
    if qtype == "F32":  # the unpermuted rows are exactly the HF source rows
        assert torch.equal(expected_qkv[:32], hf_state(hf_chat_llama)[f"{att}q_proj.weight"][:32])

    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name,
                                              dtype=torch.float32).eval()
    ids = torch.tensor([load_tokenizer(out / "tokenizer.json").encode(stdlib_texts(1)[0][:200])])
    with torch.no_grad():
        theirs = hf(input_ids=ids).logits
    ours = causal_logits(loaded.model, ids)[..., :300]
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_k_quants_match_transformers(tmp_path, qtype):
    """K-quant blocks (random: gguf-py cannot quantise to them) dequantise as transformers'
    GGUF loader does; rows of 256 values, so a wider tiny model."""
    from transformers import AutoModelForCausalLM

    from megatron_diffusion.loading.trained import load_model

    hf_dir = make_hf_model(tmp_path / "wide", "llama", tied=False, special=CHAT_SPECIALS,
                           hidden_size=256, intermediate_size=256, num_layers=2)
    gguf = write_gguf(hf_dir, tmp_path / "k.gguf", qtype=qtype)
    convert_gguf_to_mcore(gguf, tmp_path / "mc", add_mask_token=True, progress=False)
    ours = load_model(tmp_path / "mc")
    meta_types = ours.meta["converted_from"]["gguf"]["tensor_types"]
    assert meta_types[qtype] == 2 * 7 + 2  # 7 matrices per layer, embedding, output
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name,
                                              dtype=torch.float32).eval()
    ids = torch.tensor([load_tokenizer(tmp_path / "mc" / "tokenizer.json").encode(stdlib_texts(1)[0][:120])])
    with torch.no_grad():
        theirs = hf(input_ids=ids).logits
    diff = (causal_logits(ours.model, ids)[..., :300] - theirs).abs().max().item()
    assert theirs.std().item() > 1.0 and diff < 1e-4  # 0.0 measured; 5e-3 with q/k not unpermuted


def test_qwen2_gguf_is_not_permuted_and_keeps_biases(tmp_path):
    from megatron_diffusion.model import weights
    from megatron_diffusion.loading.trained import load_model

    hf_dir = make_hf_model(tmp_path / "qwen2", "qwen2", tied=True)
    gguf = write_gguf(hf_dir, tmp_path / "q.gguf", arch="qwen2", eos="<|endoftext|>")
    convert_gguf_to_mcore(gguf, tmp_path / "mc", add_mask_token=True, progress=False,
                          tensor_model_parallel_size=2)  # written for TP=2, loads at TP=1
    full = weights.local_to_full([load_model(tmp_path / "mc").model])
    src = hf_state(hf_dir)
    att = "model.layers.2.self_attn."
    for kind in ("weight", "bias"):
        expected = fuse_qkv(*(src[f"{att}{p}_proj.{kind}"] for p in "qkv"), 2)
        assert torch.equal(full[f"decoder.layers.2.self_attention.linear_qkv.{kind}"], expected)
    meta = read_meta(latest_checkpoint(tmp_path / "mc"))
    model = meta["config"]["model"]
    assert model["add_qkv_bias"] and not model["untie_embeddings_and_output_weights"]
    assert meta["converted_from"]["architecture"] == "Qwen2ForCausalLM"
    assert meta["config"]["parallel"]["tensor_model_parallel_size"] == 2


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_qwen3_gguf_norms_and_head_width_match_transformers(tmp_path, qtype):
    """A Qwen3 GGUF (llama.cpp 'qwen3': q/k rows as stored, attn_q_norm/attn_k_norm, head width
    from attention.key_length: 128 in a width of 64, as transformers' Qwen3 GGUF loader
    assumes) gives transformers' GGUF logits, and for F32 the source model's."""
    from transformers import AutoModelForCausalLM

    from megatron_diffusion.loading.trained import load_model
    from megatron_diffusion.model import weights

    hf_dir = make_hf_model(tmp_path / "qwen3", "qwen3", tied=False, num_layers=2,
                           special=CHAT_SPECIALS)
    gguf = write_gguf(hf_dir, tmp_path / "q3.gguf", arch="qwen3", qtype=qtype)
    convert_gguf_to_mcore(gguf, tmp_path / "mc", add_mask_token=True, progress=False)
    ours = load_model(tmp_path / "mc")
    model = ours.meta["config"]["model"]
    assert (model["qk_layernorm"], model["kv_channels"]) == (True, 128)
    assert not model["add_qkv_bias"]
    assert ours.meta["converted_from"]["architecture"] == "Qwen3ForCausalLM"
    full = weights.local_to_full([ours.model])
    src = hf_state(hf_dir)
    assert torch.equal(full["decoder.layers.1.self_attention.k_layernorm.weight"],
                       src["model.layers.1.self_attn.k_norm.weight"])  # norms stay F32

    ids = torch.tensor([load_tokenizer(tmp_path / "mc" / "tokenizer.json").encode(
        stdlib_texts(1)[0][:200])])
    mine = causal_logits(ours.model, ids)[..., :300]
    references = [tmp_path] if qtype != "F32" else [tmp_path, hf_dir]
    for where in references:
        kw = {"gguf_file": gguf.name} if where == tmp_path else {}
        hf = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw).eval()
        with torch.no_grad():
            theirs = hf(input_ids=ids).logits
        assert theirs.std().item() > 0.1 and (mine - theirs).abs().max().item() < 1e-4, where


def test_tokenizer_config_and_stop_tokens_from_the_metadata(hf_chat_llama, tmp_path):
    from tokenizers import Tokenizer

    gguf = write_gguf(hf_chat_llama, tmp_path / "m.gguf")
    convert_gguf_to_mcore(gguf, tmp_path / "mc", add_mask_token=True, progress=False)
    ckpt = latest_checkpoint(tmp_path / "mc")
    ours = load_tokenizer(ckpt / "tokenizer.json")
    source = Tokenizer.from_file(str(hf_chat_llama / "tokenizer.json"))
    text = "".join(stdlib_texts(3))[:4000]
    assert ours.encode(text) == source.encode(text, add_special_tokens=False).ids
    assert (ours.eos_id, ours.mask_id, ours.vocab_size) == (0, 300, 301)  # <|endoftext|>
    meta = read_meta(ckpt)
    assert meta["generation"]["stop_token_ids"] == [2, 0]  # GGUF eos <|im_end|>, document EOS
    assert meta["generation"]["chat_template"].startswith("{% for m in messages %}")
    model = meta["config"]["model"]
    assert (model["rotary_base"], model["norm_epsilon"]) == (500000.0, pytest.approx(1e-5))
    assert (model["num_layers"], model["num_query_groups"], model["kv_channels"]) == (4, 2, 16)
    assert model["max_position_embeddings"] == 128 and model["untie_embeddings_and_output_weights"]
    assert meta["converted_from"]["format"] == "gguf"
    assert meta["converted_from"]["gguf"]["tensor_types"] == {"F32": 39}  # 4 layers x 9 + 3


def test_eos_token_option(hf_chat_llama, tmp_path):
    from megatron_diffusion.errors import UsageError

    gguf = write_gguf(hf_chat_llama, tmp_path / "m.gguf")
    convert_gguf_to_mcore(gguf, tmp_path / "ok", add_mask_token=True, eos_token="<|endoftext|>",
                          progress=False)
    with pytest.raises(UsageError, match="--eos-token: '<\\|im_end\\|>' \\(id 2\\) is not the "
                                         "token the data tools end documents with"):
        convert_gguf_to_mcore(gguf, tmp_path / "bad", add_mask_token=True,
                              eos_token="<|im_end|>", progress=False)
    assert not (tmp_path / "bad").exists()


def test_export_of_a_gguf_import_is_a_normal_hf_directory(hf_chat_llama, tmp_path):
    from megatron_diffusion.convert.mcore_to_hf import convert_mcore_to_hf

    gguf = write_gguf(hf_chat_llama, tmp_path / "m.gguf")
    convert_gguf_to_mcore(gguf, tmp_path / "mc", add_mask_token=True, progress=False)
    hf_out = convert_mcore_to_hf(tmp_path / "mc", tmp_path / "hf", progress=False)
    gen = json.loads((hf_out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 0]
    tok_cfg = json.loads((hf_out / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == (hf_out / "chat_template.jinja").read_text()
    config = json.loads((hf_out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["eos_token_id"] == 2  # the GGUF's eos; generation_config.json adds the doc EOS
    assert tok_cfg["eos_token"] == "<|im_end|>"

    from transformers import AutoModelForCausalLM

    from megatron_diffusion.loading.trained import load_model

    hf = AutoModelForCausalLM.from_pretrained(hf_out, dtype=torch.float32).eval()
    ids = torch.tensor([load_tokenizer(hf_out / "tokenizer.json").encode("import os\n")])
    with torch.no_grad():
        theirs = hf(input_ids=ids).logits[..., :300]
    ours = causal_logits(load_model(tmp_path / "mc").model, ids)[..., :300]
    assert (ours - theirs).abs().max().item() < 1e-4
