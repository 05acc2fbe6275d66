"""HF -> megatron-diffusion: numerics (verify), the checkpoint format, [MASK], tokenizers."""

import json

import pytest
import torch

from megatron_diffusion.convert.verify import verify
from megatron_diffusion.data.tokenizer import load_tokenizer
from megatron_diffusion.training.checkpoint import latest_checkpoint, read_meta
from tests.convert.hf_fixtures import hf_state, make_hf_model


def test_llama_logits_match_hf(hf_llama, mc_llama):
    result = verify(hf_llama, mc_llama, batch_size=2, seq_len=24, tolerance=1e-4)
    assert result.passed, result.summary()
    assert result.num_vocab_compared == 300 and result.argmax_agreement == 1.0


def test_qwen2_tied_with_bias_logits_match_hf(hf_qwen2, mc_qwen2):
    result = verify(hf_qwen2, mc_qwen2, batch_size=2, seq_len=24, tolerance=1e-4)
    assert result.passed, result.summary()
    assert result.num_vocab_compared == 319  # 320 rows minus the [MASK] row


def test_verify_fails_for_a_different_model(hf_llama, mc_llama, tmp_path):
    other = make_hf_model(tmp_path / "other", "llama", tied=False, seed=1)
    result = verify(other, mc_llama, seq_len=8, tolerance=1e-4)
    assert not result.passed and result.max_abs_diff > 1e-2


def test_checkpoint_is_a_trainer_checkpoint_with_a_mask_row(hf_llama, mc_llama):
    ckpt = latest_checkpoint(mc_llama)
    assert ckpt.name == "iter_0000000"
    meta = read_meta(ckpt)
    assert meta["format"] == "megatron-diffusion-checkpoint" and meta["step"] == 0
    model = meta["config"]["model"]
    assert (model["vocab_size"], model["mask_token_id"]) == (301, 300)
    assert model["logit_shift"] is True and meta["config"]["attention"]["mode"] == "causal"
    assert meta["converted_from"]["architecture"] == "LlamaForCausalLM"
    assert not (ckpt / "model_optim" / "optimizer").exists()

    tok = load_tokenizer(ckpt / "tokenizer.json")
    hf_config = json.loads((hf_llama / "config.json").read_text())
    assert tok.eos_id == hf_config["eos_token_id"] == 1  # '</s>' is the document separator
    assert (tok.mask_id, tok.vocab_size, tok.hash) == (300, 301, meta["tokenizer_hash"])
    assert (mc_llama / "tokenizer.json").read_text() == (ckpt / "tokenizer.json").read_text()

    from megatron_diffusion.model import weights
    from megatron_diffusion.loading.trained import load_model

    full = weights.local_to_full([load_model(mc_llama).model])
    hf = hf_state(hf_llama)
    for name, megatron_name in (("model.embed_tokens.weight", "embedding.word_embeddings.weight"),
                                ("lm_head.weight", "output_layer.weight")):
        rows = full[megatron_name]
        assert rows.shape == (384, 64)  # 301 padded to a multiple of 128
        assert torch.equal(rows[:300], hf[name])
        assert torch.equal(rows[300], hf[name].mean(0))  # [MASK]: the mean row
        assert not rows[301:].any()


def test_mask_takes_a_spare_row_and_tp_padding(hf_qwen2, mc_qwen2):
    meta = read_meta(latest_checkpoint(mc_qwen2))
    model = meta["config"]["model"]
    assert (model["vocab_size"], model["mask_token_id"]) == (320, 300)  # no row added
    assert model["untie_embeddings_and_output_weights"] is False and model["add_qkv_bias"]
    assert meta["config"]["parallel"]["tensor_model_parallel_size"] == 2
    from megatron.core import dist_checkpointing

    from megatron_diffusion.parallel.process_groups import initialize_model_parallel

    initialize_model_parallel(1, 1)
    stored = dist_checkpointing.load_tensors_metadata(
        str(latest_checkpoint(mc_qwen2) / "model_optim"))
    assert stored["embedding.word_embeddings.weight"].global_shape == (512, 64)  # 128 * tp


def test_view_serves_transformer_engine_norm_names(hf_llama):
    from megatron_diffusion.convert.hf_to_mcore import HFTensorView, plan_import

    view = HFTensorView(plan_import(hf_llama, add_mask_token=True), padded_vocab_size=384)
    te = "decoder.layers.2.mlp.linear_fc1.layer_norm_weight"
    assert te in view and "decoder.layers.2.mlp.linear_fc1.bias" not in view
    assert torch.equal(view[te], hf_state(hf_llama)["model.layers.2.post_attention_layernorm.weight"])


def test_qwen3_qk_norms_and_wide_heads_logits_match_hf(hf_qwen3, mc_qwen3):
    result = verify(hf_qwen3, mc_qwen3, batch_size=2, seq_len=24, tolerance=1e-4)
    assert result.passed, result.summary()
    assert result.num_vocab_compared == 319 and result.argmax_agreement == 1.0
    meta = read_meta(latest_checkpoint(mc_qwen3))
    model = meta["config"]["model"]
    assert model["qk_layernorm"] is True and model["add_qkv_bias"] is False
    assert model["kv_channels"] == 32 and model["hidden_size"] == 64
    assert meta["converted_from"]["architecture"] == "Qwen3ForCausalLM"

    from megatron_diffusion.loading.trained import load_model
    from megatron_diffusion.model import weights

    full = weights.local_to_full([load_model(mc_qwen3).model])
    hf = hf_state(hf_qwen3)
    for p in "qk":  # the HF norms, not megatron's initial ones
        got = full[f"decoder.layers.3.self_attention.{p}_layernorm.weight"]
        assert torch.equal(got, hf[f"model.layers.3.self_attn.{p}_norm.weight"])
    assert full["decoder.layers.0.self_attention.linear_proj.weight"].shape == (64, 4 * 32)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_untied_qwen_logits_match_hf(arch, tmp_path):
    """Qwen2.5-Coder-7B and Qwen3-8B do not tie their embeddings."""
    from megatron_diffusion.convert.hf_to_mcore import convert_hf_to_mcore

    hf = make_hf_model(tmp_path / "hf", arch, tied=False, num_layers=2, seed=3)
    convert_hf_to_mcore(hf, tmp_path / "mc", add_mask_token=True, progress=False)
    result = verify(hf, tmp_path / "mc", seq_len=16, tolerance=1e-4)
    assert result.passed, result.summary()
    model = read_meta(latest_checkpoint(tmp_path / "mc"))["config"]["model"]
    assert model["untie_embeddings_and_output_weights"] is True
    assert (model["add_qkv_bias"], model["qk_layernorm"]) == (arch == "qwen2", arch == "qwen3")
