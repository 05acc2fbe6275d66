"""Attention backends chosen by config compute the same function (CPU: Flex forward only)."""

import pytest
import torch

from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model.inputs import forward_kwargs
from tests.helpers import VOCAB, synthetic_batch, tiny_model_config


@pytest.fixture(scope="module")
def model():
    from megatron_diffusion.model.gpt import build_model, transformer_config
    from megatron_diffusion.parallel.process_groups import initialize_model_parallel

    initialize_model_parallel(1, 1, seed=5)
    cfg = tiny_model_config()
    m = build_model(cfg, transformer_config(cfg))
    return m.eval()


@pytest.mark.parametrize("mode,visibility", [("block", "shared"), ("block", "isolated"),
                                             ("bidirectional", "isolated"), ("causal", "shared")])
def test_flex_forward_equals_sdpa(model, mode, visibility):
    attn = AttentionConfig(mode=mode, block_size=4, visibility=visibility)
    batch = synthetic_batch(attn, rows=2, seq_len=16, seed=9, doc_lengths=[6, 10])
    with torch.no_grad():
        dense = model(**forward_kwargs(batch, attn, "sdpa"))[..., :VOCAB]
        flex = model(**forward_kwargs(batch, attn, "flex"))[..., :VOCAB]
    finite = torch.isfinite(dense)
    assert torch.equal(finite, torch.isfinite(flex))
    assert (dense[finite] - flex[finite]).abs().max() < 1e-5


def test_te_backend_builds_an_additive_bias():
    attn = AttentionConfig(mode="block", block_size=4)
    batch = synthetic_batch(attn, rows=1, seq_len=8, seed=0)
    kw = forward_kwargs(batch, attn, "te")
    bias = kw["extra_block_kwargs"]["attention_bias"]
    dense = forward_kwargs(batch, attn, "sdpa")["attention_mask"]
    assert kw["attention_mask"] is None and bias.shape == dense.shape
    assert torch.equal(torch.isneginf(bias), dense) and bias[~dense].eq(0).all()


def test_flex_loss_equals_sdpa_loss_through_the_schedule(model):
    from megatron_diffusion.training.forward_backward import ForwardSpec, forward_backward

    attn = AttentionConfig(mode="block", block_size=4)
    batches = [synthetic_batch(attn, rows=2, seq_len=16, seed=s) for s in (1, 2)]
    with torch.no_grad():  # CPU Flex has no backward (torch 2.13): forward only
        a = forward_backward([model], batches, ForwardSpec(attn, LossConfig(), backend="sdpa"),
                             forward_only=True)
        b = forward_backward([model], batches, ForwardSpec(attn, LossConfig(), backend="flex"),
                             forward_only=True)
    assert abs(a["loss"] - b["loss"]) < 1e-5
