"""Seed Diffusion eq. 9 in the corruptor: rows with a reveal order are masked at a step of it."""

import pytest
import torch

from megatron_diffusion.corruption.config import CorruptionConfig
from megatron_diffusion.corruption.corruptor import Corruptor
from megatron_diffusion.errors import UsageError

MASK = 99
STEP_MAP = torch.tensor([[-1, -1, -1, -1, 2, 0, 1, 3]])  # block 0 context, block 1 searched


def _corruptor(mode="block", **cfg):
    return Corruptor(CorruptionConfig(edit_stage_fraction=0.0, **cfg), seq_len=8, mode=mode,
                     block_size=4, visibility="shared", mask_token_id=MASK,
                     random_token_ids=torch.arange(10, 20), total_steps=100)


def _corrupt(c, seed, step_map=STEP_MAP):
    x0 = torch.arange(1, 9)[None]
    return c.corrupt(x0, torch.zeros_like(x0), step=50, generator=torch.Generator().manual_seed(seed),
                     step_map_BL=step_map)


def test_a_searched_block_is_the_state_before_a_step_of_its_order():
    seen = set()
    for seed in range(40):
        batch = _corrupt(_corruptor(trajectory_fraction=1.0), seed)
        xt = batch.tokens_BS[0, :8]
        assert xt[:4].tolist() == [1, 2, 3, 4]  # context: clean, no loss
        assert batch.loss_weights_BL[0, :4].tolist() == [0.0] * 4
        assert not batch.loss_mask_BL[0, :4].any()
        masked = (xt[4:] == MASK)
        steps = STEP_MAP[0, 4:]
        s = int(steps[masked].min())  # the state x_s: revealed at s or later = masked
        assert masked.tolist() == (steps >= s).tolist()
        g = masked.float().mean()
        assert batch.loss_weights_BL[0, 4:][masked].tolist() == pytest.approx([1 / float(g)] * int(masked.sum()))
        assert batch.t_BN[0, 1].item() == pytest.approx(float(g))
        seen.add(s)
    assert seen == {0, 1, 2, 3}  # s ~ U{0..S-1}


def test_uniform_weighting_and_the_share_of_trajectory_rows():
    batch = _corrupt(_corruptor(trajectory_fraction=1.0, trajectory_weighting="uniform"), 0)
    masked = batch.tokens_BS[0, 4:8] == MASK
    assert batch.loss_weights_BL[0, 4:][masked].tolist() == [1.0] * int(masked.sum())
    c = _corruptor(trajectory_fraction=0.5)
    rows = [_corrupt(c, seed) for seed in range(200)]
    trajectory_rows = sum(not r.loss_mask_BL[0, :4].any() for r in rows)  # context has no loss
    assert 70 < trajectory_rows < 130
    none = [_corrupt(_corruptor(trajectory_fraction=0.0), seed) for seed in range(20)]
    assert all(r.loss_mask_BL[0, :4].all() for r in none)  # ordinary ELBO rows


def test_rows_without_an_order_and_single_mode():
    unsearched = torch.full((1, 8), -1)
    batch = _corrupt(_corruptor(trajectory_fraction=1.0), 0, unsearched)
    assert batch.loss_mask_BL.all()  # no order: an ordinary row
    with pytest.raises(UsageError, match="attention.mode must be 'block'"):
        _corrupt(_corruptor(mode="single"), 0)
    with pytest.raises(UsageError, match="trajectory_weighting"):
        CorruptionConfig(trajectory_weighting="nope").validate()
