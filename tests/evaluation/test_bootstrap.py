"""Bootstrap percentile intervals, checked by hand on small cases."""

import pytest
import torch

from megatron_diffusion.evaluation import bootstrap as bs


def test_resample_indices_are_seeded_and_in_range():
    a, b = bs.resample_indices(7, 50, seed=3), bs.resample_indices(7, 50, seed=3)
    assert a.shape == (50, 7) and torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) <= 6
    assert not torch.equal(a, bs.resample_indices(7, 50, seed=4))
    with pytest.raises(ValueError):
        bs.resample_indices(0, 10, seed=0)


def test_percentile_interval_by_hand():
    # 101 values 0..100: the 2.5% and 97.5% percentiles, linear interpolation
    assert bs.percentile_interval(torch.arange(101.0)) == pytest.approx((2.5, 97.5))
    assert bs.percentile_interval(torch.arange(101.0), confidence=0.5) == pytest.approx((25.0, 75.0))


def test_mean_and_ratio_on_given_resamples():
    # resample means of [0, 1] on these four resamples: 0, 0.5, 1, 0.5 -> sorted 0, .5, .5, 1;
    # quantile 0.025 sits at 0.075 of the way from 0 to 0.5, 0.975 at 0.925 from 0.5 to 1
    index = torch.tensor([[0, 0], [0, 1], [1, 1], [1, 0]])
    e = bs.mean_estimate([0.0, 1.0], index)
    assert e == pytest.approx({"value": 0.5, "lo": 0.0375, "hi": 0.9625})
    # ratio of sums per resample, not a mean of ratios: tokens [2, 6], forwards [2, 2]
    # resamples: 4/4, 8/4, 12/4, 8/4 -> 1, 2, 3, 2; on all prompts 8/4 = 2 (mean of ratios: 2 too,
    # so also check one where they differ: forwards [1, 3] -> all 8/4 = 2, mean of ratios 1.5)
    r = bs.ratio_estimate([2, 6], [2, 2], index)
    assert r["value"] == 2.0 and r["lo"] == pytest.approx(1.075) and r["hi"] == pytest.approx(2.925)
    assert bs.ratio_estimate([2, 6], [1, 3], index)["value"] == 2.0
    assert bs.resampled_ratios([2, 6], [1, 3], index).tolist() == pytest.approx([2.0, 2.0, 2.0, 2.0])


def test_a_constant_figure_has_a_zero_width_interval():
    index = bs.resample_indices(12, 200, seed=0)
    assert bs.mean_estimate([0.7] * 12, index) == pytest.approx({"value": 0.7, "lo": 0.7, "hi": 0.7})
    assert bs.ratio_estimate([3] * 12, [2] * 12, index) == pytest.approx({"value": 1.5, "lo": 1.5, "hi": 1.5})


def test_paired_difference_resamples_both_figures_together():
    index = bs.resample_indices(10, 1000, seed=0)
    a, b = [1.0] * 10, [1.0] * 10
    assert bs.paired_difference(a, b, index) == pytest.approx({"value": 0.0, "lo": 0.0, "hi": 0.0})
    # one prompt lost out of ten: P(>= 3 of it in a resample) = 7% > 2.5% > P(>= 4) = 1.3%,
    # so the lower percentile is -0.3; the upper is 0 (a resample without it)
    d = bs.paired_difference([1.0] * 9 + [0.0], b, index)
    assert d == pytest.approx({"value": -0.1, "lo": -0.3, "hi": 0.0})
    # a constant per-prompt gain of 0.1: resampled together the difference is always 0.1 (separate
    # resamples of the two figures would give an interval as wide as their spread)
    gain = bs.paired_difference([0.5, 0.6, 0.7] * 3 + [0.5], [0.4, 0.5, 0.6] * 3 + [0.4], index)
    assert gain == pytest.approx({"value": 0.1, "lo": 0.1, "hi": 0.1})
