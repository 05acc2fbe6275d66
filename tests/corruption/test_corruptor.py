"""The Corruptor front: determinism, prompts, the edit stage, the batch contract."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.corruption import CorruptionConfig, Corruptor
from megatron_diffusion.errors import UsageError
from megatron_diffusion.layout import block_ids, document_ids_from_lengths
from tests.corruption._helpers import MASK_ID, RANDOM_IDS, clean_rows, gen, make_corruptor


@pytest.mark.parametrize("mode", ["single", "block"])
@pytest.mark.parametrize("step", [0, 95])  # mask stage, edit stage
def test_same_seed_same_batch_different_seed_different(mode, step):
    c = make_corruptor(seq_len=64, mode=mode, edit_max_rate=0.3)
    x = clean_rows(4, 64)
    doc = torch.zeros_like(x)
    a = c.corrupt(x, doc, step=step, generator=gen(11))
    b = c.corrupt(x, doc, step=step, generator=gen(11))
    d = c.corrupt(x, doc, step=step, generator=gen(12))
    for name in ("tokens_BS", "loss_weights_BL", "t_BN", "num_edits_B"):
        assert torch.equal(getattr(a, name).nan_to_num(-1), getattr(b, name).nan_to_num(-1))
    assert not torch.equal(a.tokens_BS, d.tokens_BS)


def test_stage_and_u_max_helpers():
    c = make_corruptor(total_steps=1000, warmup_steps=100, edit_stage_fraction=0.2)
    assert c.stage_at(799) == "mask" and c.stage_at(800) == "edit"
    assert c.u_max_at(0) == pytest.approx(1e-3) and c.u_max_at(100) == 1.0


@pytest.mark.parametrize("mode", ["single", "block"])
@pytest.mark.parametrize("step", [0, 95])
def test_prompt_tokens_untouched_and_weightless(mode, step):
    c = make_corruptor(seq_len=16, mode=mode, edit_max_rate=0.5)
    x = clean_rows(64, 16)
    prompt = torch.zeros_like(x, dtype=torch.bool)
    prompt[:, :5] = True
    b = c.corrupt(x, torch.zeros_like(x), step=step, generator=gen(0), prompt_mask_BL=prompt)
    xt = b.tokens_BS[:, :16]
    assert torch.equal(xt[prompt], x[prompt])
    assert bool((b.loss_weights_BL[prompt] == 0).all()) and not bool(b.loss_mask_BL[prompt].any())


def test_edit_stage_loss_on_every_non_prompt_position():
    c = make_corruptor(seq_len=128, edit_max_rate=0.2, t_min=0.0)
    x = clean_rows(16, 128)
    prompt = torch.zeros_like(x, dtype=torch.bool)
    prompt[:, 100:110] = True
    b = c.corrupt(x, torch.zeros_like(x), step=99, generator=gen(4), prompt_mask_BL=prompt)
    assert b.stage == "edit"
    assert torch.equal(b.loss_mask_BL, ~prompt)
    masked = b.tokens_BS == MASK_ID
    w = torch.where(masked, 1.0 / b.t_BN, torch.ones(16, 128)) * (~prompt)
    assert torch.allclose(b.loss_weights_BL, w)  # masked: 1/t (linear); visible: 1; prompt: 0
    # budget: k <= floor(eps * n) and the edits are there (visible tokens differ from x0)
    assert bool((b.num_edits_B <= int(0.2 * 118)).all()) and b.num_edits_B.sum() > 0
    visible_changed = ((b.tokens_BS != x) & ~masked).sum(1)
    assert bool((visible_changed[b.num_edits_B == 0] == 0).all())


def test_edit_budget_tracks_t():
    c = make_corruptor(seq_len=256, edit_max_rate=0.1)
    x = clean_rows(200, 256)
    b = c.corrupt(x, torch.zeros_like(x), step=99, generator=gen(6))
    k_expected = 0.1 * b.t_BN[:, 0] * 256
    assert bool((b.num_edits_B <= 25).all())
    # num_edits is the affordable prefix: at most 1 below the stochastically rounded budget
    assert (b.num_edits_B.float() - k_expected).abs().max().item() < 2.0 + 1e-6


LENGTHS = st.lists(st.integers(1, 12), min_size=1, max_size=4)


@settings(max_examples=30, deadline=None)
@given(lengths=LENGTHS, mode=st.sampled_from(["single", "block"]),
       visibility=st.sampled_from(["shared", "isolated"]), block_size=st.integers(1, 5),
       step=st.sampled_from([0, 30, 95]),
       schedule=st.sampled_from(["linear", "cosine", "cosine-dllm"]),
       seed=st.integers(0, 2**31))
def test_batch_contract_invariants(lengths, mode, visibility, block_size, step, schedule, seed):
    L = sum(lengths)
    c = make_corruptor(seq_len=L, mode=mode, block_size=block_size, visibility=visibility,
                       schedule=schedule, warmup_steps=20, edit_max_rate=0.5)
    g = gen(seed)
    x = clean_rows(3, L, seed=seed % 997)
    doc = document_ids_from_lengths(lengths).unsqueeze(0).repeat(3, 1)
    prompt = torch.rand(3, L, generator=g) < 0.2
    b = c.corrupt(x, doc, step=step, generator=g, prompt_mask_BL=prompt)
    S = 2 * L if mode == "block" else L
    assert b.tokens_BS.shape == (3, S) and b.tokens_BS.dtype == torch.int64
    assert b.loss_weights_BL.dtype == torch.float32 and b.t_BN.shape == (3, c.num_blocks)
    assert torch.equal(b.labels_BL, x) and torch.equal(b.document_ids_BL, doc)
    assert torch.equal(b.loss_mask_BL, ~prompt)  # eligible = every non-prompt position
    assert not bool((b.loss_weights_BL > 0)[prompt].any())
    assert bool(((b.loss_weights_BL > 0) <= b.loss_mask_BL).all())
    assert b.stage == c.stage_at(step)
    xt = b.tokens_BS[:, :L]
    assert torch.equal(xt[prompt], x[prompt])
    if mode == "block":
        assert torch.equal(b.tokens_BS[:, L:], x)
        blocks = block_ids(doc, block_size, visibility)
        masked_per_block = torch.zeros(3, c.num_blocks).scatter_add_(
            1, blocks, (xt == MASK_ID).float())
        has_eligible = torch.zeros(3, c.num_blocks).scatter_add_(1, blocks, (~prompt).float()) > 0
        assert bool((masked_per_block[has_eligible] >= 1).all())
    if b.stage == "edit" and mode == "single":
        # k <= floor(eps * n); the distance itself is checked on apply_edits (test_edit_corruption)
        assert bool((b.num_edits_B <= torch.floor(0.5 * (~prompt).sum(1))).all())
    elif b.stage == "edit":  # k_b <= ceil(eps * n_b) per block
        n_BN = torch.zeros(3, c.num_blocks).scatter_add_(1, blocks, (~prompt).float())
        assert bool((b.num_edits_B <= torch.ceil(0.5 * n_BN).sum(1)).all())
    DiffusionBatch.collate([b, b])  # fixed N: batches stack


@pytest.mark.parametrize("visibility", ["shared", "isolated"])
def test_block_mode_edits_never_show_a_later_blocks_token(visibility):
    """Block b's noisy stream holds only its own tokens (or random/[MASK] ones): the model never
    sees a later block's token at inference, so training must not show it one. Block 32, eps 0.3:
    deletions happen."""
    L = 128
    c = make_corruptor(seq_len=L, mode="block", block_size=32, visibility=visibility,
                       edit_max_rate=0.3)
    x = torch.arange(100, 100 + L).repeat(64, 1)  # distinct tokens, disjoint from RANDOM_IDS
    doc = document_ids_from_lengths([50, 78]).unsqueeze(0).repeat(64, 1)
    b = c.corrupt(x, doc, step=99, generator=gen(5))
    xt = b.tokens_BS[:, :L]
    blocks = block_ids(doc, 32, visibility)
    src = torch.where(xt >= 100, xt - 100, torch.full_like(xt, -1))
    later = (src >= 0) & (blocks.gather(1, src.clamp(min=0)) > blocks)
    assert b.num_edits_B.sum() > 0 and not bool(later.any())
    assert bool((src >= 0).sum() > 0.4 * src.numel())  # most tokens visible, so it can fail


def test_block_edit_budget_follows_each_blocks_level():
    """k_b = stochastic_round(eps * u(t_b) * n_b): clean blocks (t_b small) are rarely edited,
    noisy ones more, so per-row edit counts vary with the block levels."""
    L, B = 64, 16
    c = make_corruptor(seq_len=L, mode="block", block_size=B, edit_max_rate=0.5)
    x = torch.arange(100, 100 + L).repeat(400, 1)
    blocks = block_ids(torch.zeros_like(x), B, "shared")
    u = torch.rand(400, 4, generator=gen(1)).gather(1, blocks)
    k = c._block_edit_budget(u, torch.ones_like(x, dtype=torch.bool), blocks, gen(2))
    expected = 0.5 * u[:, ::B] * B
    assert bool(((k - expected).abs() < 1).all())
    assert abs((k.double() - expected).mean().item()) < 0.05  # unbiased rounding


def test_edit_row_fraction_edits_a_share_of_rows_the_rest_are_mask_rows():
    c = make_corruptor(seq_len=64, edit_max_rate=0.3, t_min=0.5, edit_row_fraction=0.25)
    x = clean_rows(400, 64)
    b = c.corrupt(x, torch.zeros_like(x), step=99, generator=gen(8))
    masked = b.tokens_BS == MASK_ID
    all_positions = (b.loss_weights_BL > 0).all(1)  # edit-stage rows: every position has loss
    assert 0.18 < all_positions.float().mean().item() < 0.32
    plain = ~all_positions
    assert bool((b.num_edits_B[plain] == 0).all())  # unedited rows: mask-stage loss only
    assert torch.equal(b.loss_weights_BL[plain] > 0, masked[plain])
    assert torch.equal(b.tokens_BS[plain][~masked[plain]], x[plain][~masked[plain]])
    assert bool((b.num_edits_B[all_positions] > 0).float().mean() > 0.9)


@pytest.mark.parametrize("mode", ["single", "block"])
def test_cosine_dllm_warmup_caps_the_mask_rate(mode):
    """u = sin(pi t/2) > t: the warmup caps t at asin(u_max) * 2/pi, so u(t) <= u_max."""
    c = make_corruptor(seq_len=64, mode=mode, schedule="cosine-dllm", warmup_steps=100,
                       block_warmup="cap")
    x = clean_rows(50, 64)
    b = c.corrupt(x, torch.zeros_like(x), step=20, generator=gen(3))
    u = torch.sin(0.5 * torch.pi * b.t_BN.nan_to_num(0.0))
    assert u.max().item() <= c.u_max_at(20) + 1e-6
    assert u.max().item() > 0.9 * c.u_max_at(20)  # the cap is tight, not t <= u_max


def test_bad_arguments_name_the_field():
    with pytest.raises(UsageError, match="mode"):
        make_corruptor(mode="blocky")
    with pytest.raises(UsageError, match="block_size"):
        make_corruptor(mode="block", block_size=0)
    with pytest.raises(UsageError, match="random_token_ids"):
        Corruptor(CorruptionConfig(), seq_len=8, mode="single", block_size=None,
                  visibility="shared", mask_token_id=10, random_token_ids=RANDOM_IDS,
                  total_steps=10)
    c = make_corruptor(seq_len=8)
    with pytest.raises(UsageError, match="tokens_BL"):
        c.corrupt(clean_rows(2, 9), torch.zeros(2, 9, dtype=torch.long), step=0, generator=gen(0))
