"""Fixed-rate masking (the infill metrics' corruption): rate, prompt, block fallback, layout."""

import pytest
import torch

from megatron_diffusion.corruption.fixed_rate import FixedRateMasking
from megatron_diffusion.errors import UsageError
from megatron_diffusion.layout import block_ids
from tests.corruption._helpers import MASK_ID, clean_rows, gen


def test_rate_and_block_floor():
    g = gen(0)
    x = torch.randint(3, 50, (64, 32), generator=g)
    doc = torch.zeros_like(x)
    b = FixedRateMasking(0.5, mask_token_id=1, block_size=None).corrupt(x, doc, generator=g)
    assert abs(b.loss_weights_BL.mean().item() - 0.5) < 0.03
    assert torch.equal(b.tokens_BS == 1, b.loss_weights_BL > 0)
    b = FixedRateMasking(0.01, mask_token_id=1, block_size=4).corrupt(x, doc, generator=g)
    masked = b.tokens_BS[:, :32] == 1
    assert masked.view(64, 8, 4).any(-1).all()  # at least one per block
    assert torch.equal(b.tokens_BS[:, 32:], x)  # clean copy


def test_prompt_tokens_are_never_masked_and_weigh_nothing():
    x = clean_rows(8, 16)
    prompt = torch.zeros_like(x, dtype=torch.bool)
    prompt[:, :6] = True  # the first block is prompt, the second half prompt
    b = FixedRateMasking(1.0, mask_token_id=MASK_ID, block_size=4).corrupt(
        x, torch.zeros_like(x), generator=gen(1), prompt_mask_BL=prompt)
    noisy = b.tokens_BS[:, :16]
    assert torch.equal(noisy[:, :6], x[:, :6]) and (noisy[:, 6:] == MASK_ID).all()
    assert torch.equal(b.loss_mask_BL, ~prompt) and torch.equal(b.loss_weights_BL > 0, ~prompt)
    assert (b.t_BN == 1.0).all() and b.t_BN.shape == (8, 1)


def test_fallback_follows_documents_under_isolated_visibility():
    x = clean_rows(16, 10)
    doc = torch.tensor([0] * 3 + [1] * 7).expand(16, 10)  # blocks [0,3) [3,7) [7,10)
    b = FixedRateMasking(1e-6, mask_token_id=MASK_ID, block_size=4, visibility="isolated").corrupt(
        x, doc, generator=gen(2))
    masked = b.tokens_BS[:, :10] == MASK_ID
    blocks = block_ids(doc, 4, "isolated")
    per_block = torch.zeros(16, 3, dtype=torch.long).scatter_add_(1, blocks, masked.long())
    assert (per_block == 1).all()  # exactly the one fallback token per block


def test_same_generator_state_same_batch():
    x = clean_rows(4, 16)
    fn = FixedRateMasking(0.3, mask_token_id=MASK_ID, block_size=4).corrupt
    a, b = fn(x, torch.zeros_like(x), generator=gen(3)), fn(x, torch.zeros_like(x), generator=gen(3))
    assert torch.equal(a.tokens_BS, b.tokens_BS)


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_rate_outside_zero_one_is_refused(rate):
    with pytest.raises(UsageError, match="mask rate"):
        FixedRateMasking(rate, mask_token_id=MASK_ID, block_size=None)
