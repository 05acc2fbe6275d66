"""A trained diffusion checkpoint -> HF export -> back: same weights, same logits, same config."""

import json

import pytest
import torch

from megatron_diffusion.loading.trained import load_model
from megatron_diffusion.convert.hf_export import is_hf_export, load_hf_export
from megatron_diffusion.convert.hf_to_mcore import convert_hf_to_mcore
from megatron_diffusion.convert.mcore_to_hf import convert_mcore_to_hf
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model import weights
from megatron_diffusion.model.inputs import model_inputs
from megatron_diffusion.training.checkpoint import latest_checkpoint, read_meta
from tests.helpers import make_checkpoint, synthetic_batch


@torch.no_grad()
def _block_logits(loaded, attn: AttentionConfig) -> torch.Tensor:
    batch = synthetic_batch(attn, rows=2, seq_len=16, seed=3)
    tokens = batch.tokens_BS.clamp(max=loaded.config.model.vocab_size - 1)
    tokens[tokens == 60] = loaded.config.model.mask_token_id  # helpers' MASK_ID -> this vocab's
    batch.tokens_BS = tokens
    return loaded.model(*model_inputs(batch, attn)).float()


@pytest.mark.parametrize("overrides,architecture", [
    ({}, "LlamaForCausalLM"),
    ({"add_qkv_bias": True, "untie_embeddings_and_output_weights": False}, "Qwen2ForCausalLM"),
    ({"qk_layernorm": True, "kv_channels": 32}, "Qwen3ForCausalLM"),
])
def test_export_then_import_is_the_same_model(overrides, architecture, tmp_path):
    attn = AttentionConfig(mode="block", block_size=4)
    original = make_checkpoint(tmp_path / "run", attention=attn, **overrides)
    export = tmp_path / "export"
    convert_mcore_to_hf(original, export, progress=False)
    assert is_hf_export(export)

    config = json.loads((export / "config.json").read_text())
    meta = read_meta(original)
    assert config["architectures"] == [architecture]
    assert config["diffusion"]["attention_mode"] == "block"
    assert config["diffusion"]["block_size"] == 4
    assert config["diffusion"]["mask_token_id"] == meta["config"]["model"]["mask_token_id"]
    assert config["diffusion"]["logit_shift"] is False

    reimported = tmp_path / "reimported"
    convert_hf_to_mcore(export, reimported, progress=False)
    re_meta = read_meta(latest_checkpoint(reimported))
    assert re_meta["config"] == meta["config"]  # the trained config, not AR defaults
    assert re_meta["tokenizer_hash"] == meta["tokenizer_hash"]

    reference = load_model(original)
    want_logits = _block_logits(reference, attn)
    want = weights.local_to_full([reference.model])
    got = weights.local_to_full([load_model(reimported).model])
    assert want.keys() == got.keys()
    vocab = meta["config"]["model"]["vocab_size"]
    for name in want:
        if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
            # megatron's padding rows (random in the helper's model, -inf logits) are not
            # exported; the re-import pads with zeros
            assert not got[name][vocab:].any()
            want[name], got[name] = want[name][:vocab], got[name][:vocab]
        assert torch.equal(want[name], got[name]), name

    from_hf = load_hf_export(export)
    assert from_hf.config.attention == reference.config.attention
    assert from_hf.tokenizer_path == str(export / "tokenizer.json")
    assert torch.equal(_block_logits(from_hf, attn), want_logits)  # same greedy tokens


def test_sampler_decodes_an_hf_export_like_the_original(tmp_path):
    """Trained-format checkpoint -> HF export -> our sampler: the same greedy tokens."""
    from megatron_diffusion.loading.trained import load_sampler

    attn = AttentionConfig(mode="block", block_size=4)
    original = make_checkpoint(tmp_path / "run", attention=attn, seed=3)
    export = tmp_path / "hf"
    convert_mcore_to_hf(original, export, progress=False)
    prompts = ["def add(a, b):\n    return", "import json\n\n"]
    knobs = dict(max_new_tokens=12, block_size=4, strategy="threshold", threshold=0.5)
    a = [r.text for r in load_sampler(str(original), **knobs).complete(prompts)]
    b = [r.text for r in load_sampler(str(export), **knobs).complete(prompts)]
    assert a == b and any(a)


def test_bias_and_qk_norms_together_have_no_hf_architecture(tmp_path):
    from megatron_diffusion.errors import UsageError

    ckpt = make_checkpoint(tmp_path / "run", add_qkv_bias=True, qk_layernorm=True)
    with pytest.raises(UsageError, match="both model.add_qkv_bias and model.qk_layernorm has no "
                                         "HF architecture"):
        convert_mcore_to_hf(ckpt, tmp_path / "export", progress=False)
    assert not (tmp_path / "export").exists()
