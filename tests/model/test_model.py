"""The diffusion model in one process: masks really isolate, MASK is never predicted, clear
errors for TE/FP8 without Transformer Engine."""

import pytest
import torch

from megatron_diffusion.errors import UsageError
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model.inputs import model_inputs
from tests.helpers import MASK_ID, VOCAB, synthetic_batch, tiny_model_config

L, B = 16, 4


@pytest.fixture(scope="module")
def model():
    from megatron_diffusion.model.gpt import build_model, transformer_config
    from megatron_diffusion.parallel.process_groups import initialize_model_parallel

    initialize_model_parallel(1, 1, seed=3)
    cfg = tiny_model_config()
    m = build_model(cfg, transformer_config(cfg))
    m.eval()
    return m


def _logits(model, batch, attn):
    with torch.no_grad():
        return model(*model_inputs(batch, attn))[..., :VOCAB]


def test_mask_token_and_padding_logits_are_minus_inf(model):
    attn = AttentionConfig(mode="bidirectional")
    logits = _logits(model, synthetic_batch(attn, rows=2, seq_len=L, seed=0), attn)
    assert torch.isneginf(logits[..., MASK_ID]).all()
    full = model(*model_inputs(synthetic_batch(attn, rows=1, seq_len=L, seed=0), attn))
    assert torch.isneginf(full[..., VOCAB:]).all()  # vocabulary padding
    assert torch.isfinite(logits[..., :MASK_ID]).all()


@pytest.mark.parametrize("clean_stream", ["block_causal", "causal"])
def test_block_mode_noisy_logits_see_only_own_block_and_earlier_clean(model, clean_stream):
    attn = AttentionConfig(mode="block", block_size=B, clean_stream=clean_stream)
    base = synthetic_batch(attn, rows=1, seq_len=L, seed=1)
    ref = _logits(model, base, attn)
    for b in range(L // B):
        changed = synthetic_batch(attn, rows=1, seq_len=L, seed=1)
        g = torch.Generator().manual_seed(100 + b)
        noisy, clean = changed.tokens_BS[:, :L], changed.tokens_BS[:, L:]
        # change the noisy stream of every other block and the clean copy of blocks >= b
        for other in range(L // B):
            if other != b:
                noisy[:, other * B:(other + 1) * B] = torch.randint(0, MASK_ID, (1, B), generator=g)
        clean[:, b * B:] = torch.randint(0, MASK_ID, (1, L - b * B), generator=g)
        out = _logits(model, changed, attn)
        sl = slice(b * B, (b + 1) * B)
        assert torch.allclose(out[:, sl], ref[:, sl], atol=1e-6), f"block {b} saw a change"
    # and the test can fail: changing the block's own clean prefix does change it
    changed = synthetic_batch(attn, rows=1, seq_len=L, seed=1)
    changed.tokens_BS[:, L] = (changed.tokens_BS[:, L] + 1) % MASK_ID
    out = _logits(model, changed, attn)
    assert not torch.allclose(out[:, B:2 * B], ref[:, B:2 * B], atol=1e-6)


@pytest.mark.parametrize("mode", ["causal", "bidirectional", "block"])
def test_isolated_packing_documents_do_not_see_each_other(model, mode):
    attn = AttentionConfig(mode=mode, block_size=B, visibility="isolated")
    docs = [6, 10]
    base = synthetic_batch(attn, rows=1, seq_len=L, seed=2, doc_lengths=docs)
    ref = _logits(model, base, attn)
    changed = synthetic_batch(attn, rows=1, seq_len=L, seed=2, doc_lengths=docs)
    g = torch.Generator().manual_seed(7)
    changed.tokens_BS[:, :6] = torch.randint(0, MASK_ID, (1, 6), generator=g)  # noisy doc 0
    if mode == "block":
        changed.tokens_BS[:, L:L + 6] = torch.randint(0, MASK_ID, (1, 6), generator=g)
    out = _logits(model, changed, attn)
    assert torch.allclose(out[:, 6:L], ref[:, 6:L], atol=1e-6)
    assert not torch.allclose(out[:, :6], ref[:, :6], atol=1e-6)
    # with shared visibility the same change does reach document 1
    shared = AttentionConfig(mode=mode, block_size=B, visibility="shared")
    if mode != "causal":
        a = _logits(model, synthetic_batch(shared, rows=1, seq_len=L, seed=2, doc_lengths=docs), shared)
        c = synthetic_batch(shared, rows=1, seq_len=L, seed=2, doc_lengths=docs)
        c.tokens_BS[:, :6] = changed.tokens_BS[:, :6]
        if mode == "block":
            c.tokens_BS[:, L:L + 6] = changed.tokens_BS[:, L:L + 6]
        assert not torch.allclose(_logits(model, c, shared)[:, 6:L], a[:, 6:L], atol=1e-6)


def test_positions_restart_per_document_when_isolated(model):
    """Two identical documents packed isolated give identical logits (RoPE restarts)."""
    attn = AttentionConfig(mode="bidirectional", visibility="isolated")
    batch = synthetic_batch(attn, rows=1, seq_len=L, seed=4, doc_lengths=[8, 8])
    batch.tokens_BS[:, 8:] = batch.tokens_BS[:, :8]
    out = _logits(model, batch, attn)
    assert torch.allclose(out[:, :8], out[:, 8:], atol=1e-5)


@pytest.mark.parametrize("overrides,needle", [
    ({"transformer_impl": "transformer_engine"}, "Transformer Engine"),
    ({"transformer_impl": "transformer_engine", "fp8": "delayed"}, "pip install"),
    ({"fp8": "tensorwise"}, "model.fp8"),
    ({"attention_backend": "te"}, "model.attention_backend"),
])
def test_te_and_fp8_without_transformer_engine_fail_clearly(overrides, needle):
    cfg = tiny_model_config(**overrides)
    with pytest.raises(UsageError, match=needle):
        cfg.validate()


def test_fp8_maps_onto_megatron_config():
    from megatron_diffusion.model.gpt import transformer_config

    for recipe in ("delayed", "tensorwise"):
        tcfg = transformer_config(tiny_model_config(fp8=recipe))  # mapping only, TE not needed
        assert tcfg.fp8 == "hybrid" and tcfg.fp8_recipe == recipe
    assert transformer_config(tiny_model_config()).fp8 is None


def test_tp_must_divide_heads():
    with pytest.raises(UsageError, match="tensor_model_parallel_size"):
        tiny_model_config().validate().check_tensor_parallel(3)
