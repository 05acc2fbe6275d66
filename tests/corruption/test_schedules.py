import math

import pytest
import torch

from megatron_diffusion.corruption.schedules import SCHEDULES, get_schedule
from megatron_diffusion.errors import UsageError


def test_linear_by_hand():
    s = get_schedule("linear")
    t = torch.tensor([0.25, 0.5, 1.0])
    assert s.u(t).tolist() == [0.25, 0.5, 1.0]
    assert s.du(t).tolist() == [1.0, 1.0, 1.0]
    assert s.weight(t).tolist() == [4.0, 2.0, 1.0]  # w = 1/t


def test_cosine_by_hand():
    s = get_schedule("cosine")
    t = torch.tensor([0.5], dtype=torch.float64)
    # u(1/2) = 1 - cos(pi/4) = 1 - sqrt(2)/2; u'(1/2) = (pi/2) sqrt(2)/2
    assert s.u(t).item() == pytest.approx(1 - math.sqrt(2) / 2)
    assert s.du(t).item() == pytest.approx(math.pi / 2 * math.sqrt(2) / 2)
    assert s.weight(t).item() == pytest.approx((math.pi / 2 * math.sqrt(2) / 2) / (1 - math.sqrt(2) / 2))
    assert s.u(torch.tensor([1.0])).item() == pytest.approx(1.0)


def test_cosine_is_accurate_in_float32_at_small_t():
    """``1 - cos(pi t/2)`` in float32 cancels: 1.5% high at t = 1e-3 (weight 1971 instead of
    ~2000); ``2 sin^2(pi t/4)`` is the same function without the cancellation."""
    s = get_schedule("cosine-bd3lms")
    t64 = torch.tensor([1e-4, 1e-3, 1e-2, 0.1], dtype=torch.float64)
    exact_u = 1 - torch.cos(0.5 * math.pi * t64)  # float64: exact enough here
    exact_w = 0.5 * math.pi * torch.sin(0.5 * math.pi * t64) / exact_u
    u32, w32 = s.u(t64.float()).double(), s.weight(t64.float()).double()
    assert torch.allclose(u32, exact_u, rtol=1e-5), (u32, exact_u)
    assert torch.allclose(w32, exact_w, rtol=1e-5), (w32, exact_w)


def test_log_linear_by_hand():
    s = get_schedule("log-linear")
    t = torch.tensor([0.5], dtype=torch.float64)
    assert s.u(t).item() == pytest.approx(0.4995)
    assert s.weight(t).item() == pytest.approx(2.0)  # (1-eps)/((1-eps) t) = 1/t


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_derivative_matches_finite_difference_and_u_below_t(name):
    s = get_schedule(name)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    h = 1e-6
    numeric = (s.u(t + h) - s.u(t - h)) / (2 * h)
    assert torch.allclose(s.du(t), numeric, atol=1e-6)
    # warmup caps t at t_cap(u_max); that is a cap on the mask rate: u(t_cap(u)) <= u, tight
    for u_max in (1e-3, 0.1, 0.5, 0.9, 1.0):
        cap = s.t_cap(u_max)
        assert s.u(torch.tensor([cap], dtype=torch.float64)).item() <= u_max + 1e-12
    if name != "cosine-dllm":  # the others keep u(t) <= t, so the cap is t <= u_max itself
        assert bool((s.u(t) <= t + 1e-12).all()) and s.t_cap(0.3) == 0.3
    assert s.u(torch.zeros(1)).item() == 0.0


def test_two_cosines_under_distinct_names_by_hand():
    bd3, dllm = get_schedule("cosine-bd3lms"), get_schedule("cosine-dllm")
    assert get_schedule("cosine") is bd3
    t = torch.tensor([1 / 3], dtype=torch.float64)  # pi t / 2 = pi / 6: sin 1/2, cos sqrt(3)/2
    r3 = math.sqrt(3) / 2
    assert bd3.u(t).item() == pytest.approx(1 - r3)
    assert bd3.weight(t).item() == pytest.approx((math.pi / 2) * 0.5 / (1 - r3))
    assert dllm.u(t).item() == pytest.approx(0.5)
    assert dllm.du(t).item() == pytest.approx(math.pi / 2 * r3)
    assert dllm.weight(t).item() == pytest.approx(math.pi / 2 * math.sqrt(3))  # (pi/2) cot(pi/6)
    # dllm: alpha(t) = 1 - cos(pi (1 - t) / 2), u = 1 - alpha; its weight -alpha'/(1 - alpha)
    alpha = 1 - math.cos(math.pi / 2 * (1 - 1 / 3))
    d_alpha = -(math.pi / 2) * math.sin(math.pi / 2 * (1 - 1 / 3))
    assert dllm.u(t).item() == pytest.approx(1 - alpha)
    assert dllm.weight(t).item() == pytest.approx(-d_alpha / (1 - alpha))
    assert dllm.t_cap(0.5) == pytest.approx(1 / 3)  # sin(pi/6) = 1/2


def test_unknown_schedule_names_choices():
    with pytest.raises(UsageError, match="schedule: got 'cosin'.*'linear'"):
        get_schedule("cosin")
