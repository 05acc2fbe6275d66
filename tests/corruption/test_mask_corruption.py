"""Single-mode (one t per row) mask corruption: rates, ELBO weights, warmup."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from megatron_diffusion.corruption.schedules import get_schedule
from tests.corruption._helpers import MASK_ID, clean_rows, gen, make_corruptor


def test_linear_weights_are_one_over_t_on_masked_only():
    c = make_corruptor(seq_len=8, t_min=0.0)
    x = clean_rows(4, 8)
    b = c.corrupt(x, torch.zeros_like(x), step=0, generator=gen(3))
    masked = b.tokens_BS == MASK_ID
    assert b.t_BN.shape == (4, 1)
    expected = torch.where(masked, 1.0 / b.t_BN, torch.zeros(4, 8))
    assert torch.equal(b.loss_weights_BL, expected)
    assert torch.equal(b.loss_weights_BL > 0, masked)
    assert bool(b.loss_mask_BL.all())  # no prompt: every position is eligible
    assert torch.equal(b.labels_BL, x) and torch.equal(b.tokens_BS[~masked], x[~masked])
    assert b.stage == "mask" and b.num_edits_B.tolist() == [0, 0, 0, 0]


def test_weighting_none_gives_one():
    c = make_corruptor(weighting="none")
    x = clean_rows(8, 16)
    b = c.corrupt(x, torch.zeros_like(x), step=0, generator=gen(0))
    assert torch.equal(b.loss_weights_BL, (b.loss_weights_BL > 0).float())


@pytest.mark.parametrize("schedule", ["linear", "cosine", "log-linear"])
def test_mean_mask_rate_matches_expected_u(schedule):
    t_min = 1e-3
    c = make_corruptor(seq_len=16, schedule=schedule, t_min=t_min)
    x = clean_rows(4000, 16)
    b = c.corrupt(x, torch.zeros_like(x), step=0, generator=gen(1))
    rate = (b.tokens_BS == MASK_ID).float().mean().item()
    grid = torch.linspace(t_min, 1.0, 100001, dtype=torch.float64)
    expected = get_schedule(schedule).u(grid).mean().item()
    # row rate std <= sqrt(Var u(t) + 1/(4L)) < 0.33; 4000 rows -> std < 0.0053; 5 sigma
    assert abs(rate - expected) < 0.027
    assert float(b.t_BN.min()) >= t_min


@settings(max_examples=15, deadline=None)
@given(warmup_steps=st.integers(1, 1000), frac=st.floats(0.0, 0.999), seed=st.integers(0, 2**31))
def test_warmup_never_exceeds_u_max(warmup_steps, frac, seed):
    step = int(frac * warmup_steps)
    c = make_corruptor(seq_len=16, warmup_steps=warmup_steps)
    u_max = c.u_max_at(step)
    x = clean_rows(64, 16)
    b = c.corrupt(x, torch.zeros_like(x), step=step, generator=gen(seed))
    assert float(b.t_BN.max()) <= u_max
    assert torch.equal(b.loss_weights_BL, (b.loss_weights_BL > 0).float())  # w = 1 during warmup
    # 64*16 Bernoulli(<= u_max) draws: mean rate within 5 sigma of at most u_max
    n = 64 * 16
    rate = (b.tokens_BS == MASK_ID).float().mean().item()
    assert rate <= u_max + 5 * (max(u_max * (1 - u_max), 1e-4) / n) ** 0.5 + 1e-3


def test_warmup_mean_rate_is_half_u_max_linear():
    c = make_corruptor(seq_len=16, warmup_steps=100)
    x = clean_rows(2000, 16)
    b = c.corrupt(x, torch.zeros_like(x), step=40, generator=gen(2))
    u_max = c.u_max_at(40)
    rate = (b.tokens_BS == MASK_ID).float().mean().item()
    assert abs(rate - u_max / 2) < 0.02  # t ~ U(0, u_max), u(t) = t
