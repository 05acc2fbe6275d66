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
    # warmup caps t; the cap is a cap on the mask rate only because u(t) <= t
    assert bool((s.u(t) <= t + 1e-12).all())
    assert s.u(torch.zeros(1)).item() == 0.0


def test_unknown_schedule_names_choices():
    with pytest.raises(UsageError, match="schedule: got 'cosin'.*'linear'"):
        get_schedule("cosin")
