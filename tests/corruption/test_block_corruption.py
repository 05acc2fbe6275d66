"""Block mode: per-block levels, clipped rate, one-token fallback, x_t (+) x0 layout."""

import math

import torch

from megatron_diffusion.corruption.block import clipped_rate, ensure_one_masked, num_block_slots
from megatron_diffusion.layout import block_ids, document_ids_from_lengths
from tests.corruption._helpers import MASK_ID, clean_rows, gen, make_corruptor


def test_clipped_rate_by_hand():
    u = torch.tensor([0.0, 0.1, 0.25, 0.6, 1.0])
    assert clipped_rate(u, 4).tolist() == [0.25, 0.25, 0.25, 0.6000000238418579, 1.0]


def test_fallback_masks_exactly_one_in_empty_blocks():
    blocks = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    masked = torch.tensor([[False, False, False, False, True, False, False, False]])
    eligible = torch.ones(1, 8, dtype=torch.bool)
    eligible[0, 0] = False  # a prompt token is never the fallback
    out = ensure_one_masked(masked, blocks, eligible, 2, gen(0))
    assert out[0, 4:].tolist() == [True, False, False, False]  # untouched: had one
    assert out[0, :4].sum().item() == 1 and not out[0, 0]
    # uniform over the 3 eligible positions
    picks = torch.zeros(4)
    for seed in range(300):
        picks += ensure_one_masked(masked, blocks, eligible, 2, gen(seed))[0, :4].float()
    assert picks[0] == 0 and all(70 < p < 130 for p in picks[1:].tolist())


def test_fallback_with_given_keys_takes_the_eligible_maximum():
    blocks = torch.tensor([[0, 0, 0, 1, 1, 1]])
    masked = torch.zeros(1, 6, dtype=torch.bool)
    eligible = torch.tensor([[False, True, True, True, True, True]])
    keys = torch.tensor([[0.9, 0.2, 0.7, 0.5, 0.5, 0.1]])  # 0.9 is a prompt token's
    out = ensure_one_masked(masked, blocks, eligible, 2, None, keys_BL=keys)
    assert out.tolist() == [[False, False, True, True, True, False]]  # a tie masks both


def test_block_layout_is_xt_then_x0_with_weights_over_u_blk():
    c = make_corruptor(seq_len=8, mode="block", block_size=4, t_min=0.0)
    x = clean_rows(3, 8)
    doc = torch.zeros_like(x)
    b = c.corrupt(x, doc, step=50, generator=gen(5))
    assert b.tokens_BS.shape == (3, 16) and b.t_BN.shape == (3, 2)
    xt, clean = b.tokens_BS[:, :8], b.tokens_BS[:, 8:]
    assert torch.equal(clean, x) and torch.equal(b.labels_BL, x)
    masked = xt == MASK_ID
    assert torch.equal(xt[~masked], x[~masked])
    # linear: weight = 1 / max(t_b, 1/4) on the masked tokens of block b
    t_BL = b.t_BN.repeat_interleave(4, dim=1)
    expected = torch.where(masked, 1.0 / t_BL.clamp(min=0.25), torch.zeros_like(t_BL))
    assert torch.allclose(b.loss_weights_BL, expected)
    assert torch.equal(b.loss_weights_BL > 0, masked)
    assert bool(b.loss_mask_BL.all())  # no prompt: every position is eligible


def test_every_block_has_a_masked_token_and_rate_at_least_one_over_b():
    B = 4
    c = make_corruptor(seq_len=16, mode="block", block_size=B)
    x = clean_rows(500, 16)
    b = c.corrupt(x, torch.zeros_like(x), step=0, generator=gen(7))
    per_block = (b.tokens_BS[:, :16] == MASK_ID).view(500, 4, B).sum(-1).float()
    assert bool((per_block >= 1).all())
    # in expectation: E[#masked] = B * E[u_blk] + P(fallback) >= 1 per block
    grid = torch.linspace(1e-3, 1, 10001)
    expected_min = B * clipped_rate(grid, B).mean().item()
    assert per_block.mean().item() >= expected_min - 0.1


def test_warmup_in_block_mode_keeps_the_one_over_b_floor():
    c = make_corruptor(seq_len=16, mode="block", block_size=4, warmup_steps=1000)
    x = clean_rows(500, 16)
    b = c.corrupt(x, torch.zeros_like(x), step=0, generator=gen(8))
    assert float(b.t_BN.max()) <= c.u_max_at(0)
    rate = (b.tokens_BS[:, :16] == MASK_ID).float().mean().item()
    # u(t) <= 1e-3, so the rate is the floor 1/B (plus the rare fallback): ~0.25..0.35
    assert 0.22 < rate < 0.36
    assert torch.equal(b.loss_weights_BL, (b.loss_weights_BL > 0).float())  # w = 1 during warmup


def test_block_warmup_cap_masks_one_per_block_at_the_start():
    """'cap': no 1/B floor during warmup, so at step 0 (u <= 1e-3) each block has exactly its
    fallback token masked: 1/B = 25%, where 'floor' masks ~33% (1/B + P(none masked) / B)."""
    x = clean_rows(500, 16)
    rates = {}
    for reading in ("floor", "cap"):
        c = make_corruptor(seq_len=16, mode="block", block_size=4, warmup_steps=1000,
                           block_warmup=reading)
        b = c.corrupt(x, torch.zeros_like(x), step=0, generator=gen(8))
        per_block = (b.tokens_BS[:, :16] == MASK_ID).view(500, 4, 4).sum(-1)
        assert bool((per_block >= 1).all())  # the forced mask is kept in both readings
        rates[reading] = per_block.float().mean().item() / 4
    assert 0.25 <= rates["cap"] < 0.252
    expected_floor = 0.25 + 0.75 ** 4 / 4  # E[#masked] = B/B + P(none masked) per block
    assert abs(rates["floor"] - expected_floor) < 0.015


def test_block_warmup_cap_changes_nothing_after_warmup():
    x = clean_rows(50, 16)
    out = [make_corruptor(seq_len=16, mode="block", block_size=4, warmup_steps=10,
                          block_warmup=r).corrupt(x, torch.zeros_like(x), step=10,
                                                  generator=gen(3)) for r in ("floor", "cap")]
    assert torch.equal(out[0].tokens_BS, out[1].tokens_BS)
    assert torch.equal(out[0].loss_weights_BL, out[1].loss_weights_BL)


def test_isolated_blocks_restart_per_document():
    doc = document_ids_from_lengths([3, 5]).unsqueeze(0).repeat(200, 1)
    c = make_corruptor(seq_len=8, mode="block", block_size=2, visibility="isolated", t_min=0.0)
    assert c.num_blocks == num_block_slots(8, 2, "isolated") == 8
    x = clean_rows(200, 8)
    b = c.corrupt(x, doc, step=10, generator=gen(9))
    # blocks [0 0 1 | 2 2 3 3 4]: 5 used slots, the rest NaN
    assert bool(torch.isnan(b.t_BN[:, 5:]).all()) and not bool(torch.isnan(b.t_BN[:, :5]).any())
    masked = b.tokens_BS[:, :8] == MASK_ID
    # the one-token blocks (doc 0's last token, doc 1's last token) are always masked
    assert bool(masked[:, 2].all()) and bool(masked[:, 7].all())
    blocks = block_ids(doc, 2, "isolated")
    t_BL = b.t_BN.gather(1, blocks)
    expected = torch.where(masked, 1.0 / t_BL.clamp(min=0.5), torch.zeros_like(t_BL))
    assert torch.allclose(b.loss_weights_BL, expected)
    # shared packing would have put tokens 2 and 3 in one block; isolated gives them two levels
    assert bool((t_BL[:, 2] != t_BL[:, 3]).all())


def test_num_block_slots_shared():
    assert num_block_slots(10, 4, "shared") == math.ceil(10 / 4)
