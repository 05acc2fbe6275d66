"""The MFU estimate's attention term counts the pairs the mask allows (hand-computed counts)."""

import torch

from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.masks.dense import attention_allowed
from megatron_diffusion.training.observability import attended_pairs, flops_per_token


def test_block_mode_pairs_are_l_squared_plus_lb():
    # x_t (+) x0 with L = 8, B = 4: noisy->noisy 2 blocks x 4 x 4 = 32; noisy->clean block 1
    # sees clean block 0: 4 x 4 = 16; clean->clean block-causal 16 + 32 = 48. 96 = L*L + L*B.
    doc = torch.zeros(1, 8, dtype=torch.long)
    assert attended_pairs(AttentionConfig(mode="block", block_size=4), doc) == 96


def test_causal_and_chunking_and_isolated_documents():
    doc = torch.zeros(1, 10, dtype=torch.long)
    assert attended_pairs(AttentionConfig(mode="causal"), doc, query_chunk=3) == 55
    # isolated: documents of 3 and 5 tokens, causal inside each: 6 + 15 per row; two rows
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]] * 2)
    cfg = AttentionConfig(mode="causal", visibility="isolated")
    assert attended_pairs(cfg, docs, query_chunk=5) == 21
    assert attended_pairs(cfg, docs) == attention_allowed(cfg, docs).sum().item() / 2


def test_flops_per_token_dense_default_and_honest_count():
    n, layers, h, S = 1000, 2, 16, 8
    assert flops_per_token(n, layers, h, S) == 6 * n + 12 * layers * h * S
    assert flops_per_token(n, layers, h, S, attended_pairs=S * S / 4) == 6 * n + 3 * layers * h * S
