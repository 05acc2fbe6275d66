"""The secondary continuation-accuracy figures of ``eval quality``, by hand."""

import pytest

from megatron_diffusion.evaluation.aup import aup
from megatron_diffusion.evaluation.continuation import continuation_accuracy, matching_prefix, summarize_curve


def test_continuation_accuracy_by_hand():
    truths = [[5, 6, 7, 8], [1, 2, 3, 4]]
    # positions compared one by one; a shift by one token scores 0, an early stop counts as wrong
    assert continuation_accuracy([[5, 6, 0, 8], [1, 2]], truths) == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert continuation_accuracy([[6, 7, 8, 9], [1, 2, 3, 4, 5]], truths) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        continuation_accuracy([[1]], truths)
    assert matching_prefix([[5, 6, 0, 8], [1, 2]], truths) == pytest.approx((2 + 2) / 2)
    assert matching_prefix([[6, 7, 8, 9], [1, 2, 3, 4, 5]], truths) == pytest.approx((0 + 4) / 2)


def _point(label, tpf, acc, tps):
    return {"label": label, "tokens_per_forward": tpf, "accuracy": acc, "tokens_per_second": tps}


def test_summary_picks_the_fastest_point_within_one_point():
    ar = _point("AR baseline", 1.0, 0.52, 10.0)
    curve = [_point("1 token/step", 1.0, 0.50, 9.0), _point("threshold 0.9", 1.5, 0.495, 14.0),
             _point("threshold 0.5", 2.5, 0.45, 25.0)]
    s = summarize_curve(ar, curve)
    assert s["best_within_1pt"]["label"] == "threshold 0.9"
    assert s["best_within_1pt"]["speedup_tokens_per_second_over_ar"] == pytest.approx(1.4)
    assert s["y_max_percent"] == pytest.approx(52.0)
    assert s["aup"] == pytest.approx(aup([(1.0, 50.0), (1.5, 49.5), (2.5, 45.0)], 52.0))
    assert s["aup_within_1pt"] == pytest.approx(aup([(1.0, 50.0), (1.5, 49.5)], 52.0))
    assert s["ar_baseline_aup"] == pytest.approx(52.0)
