"""d3LLM's AUP, by hand."""

import math

import pytest

from megatron_diffusion.evaluation.aup import aup


def test_aup_by_hand():
    curve = [(3.0, 48.0), (1.0, 50.0), (4.0, 40.0), (2.0, 50.0)]  # unsorted on purpose
    w48 = math.exp(-3 * (1 - 48 / 50))
    # d3LLM: y_min = y_1 - 5 = 45 drops (4, 40); rho_1 y_1 + trapezoids of y W(y)
    assert aup(curve) == pytest.approx(1 * 50 + 0.5 * 1 * (50 + 50) + 0.5 * 1 * (48 * w48 + 50))
    assert aup(curve, drop=1.0) == pytest.approx(50 + 50)  # 48 < 50 - 1: only the first two
    # y_max from another decode (e.g. the AR baseline) weighs every point down
    w = [math.exp(-3 * (1 - y / 60)) for y in (50, 48)]
    assert aup(curve, 60.0) == pytest.approx(50 + 0.5 * (50 * w[0] * 2) + 0.5 * (48 * w[1] + 50 * w[0]))
    assert aup([(1.0, 70.0)]) == 70.0  # one point: rho x accuracy (an AR decoder's AUP)
    assert aup([(1.0, 0.0), (2.0, 0.0)]) == 0.0
    assert aup(curve, alpha=0.0) == pytest.approx(50 + 50 + 0.5 * (48 + 50))  # no penalty: plain area
    with pytest.raises(ValueError):
        aup([(0.0, 10.0)])
