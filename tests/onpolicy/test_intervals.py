"""``onpolicy/intervals.py``: per-prompt records, bootstrap intervals and paired differences of
``onpolicy-eval``, checked by hand."""

import pytest

from megatron_diffusion.errors import UsageError
from megatron_diffusion.onpolicy import intervals


def _rows(scores, tokens=None, forwards=None):
    n = len(scores)
    return intervals.per_prompt([f"t{i}" for i in range(n)], scores, tokens or [4] * n,
                                forwards or [2] * n)


def test_per_prompt_keeps_a_prompts_samples_together():
    rows = intervals.per_prompt(["a", "b"], [1, 0, 0, 0], [4, 4, 8, 8], [2, 2, 4, 3])
    assert rows == [{"task_id": "a", "samples": 2, "score": 0.5, "tokens": 8, "forwards": 4},
                    {"task_id": "b", "samples": 2, "score": 0.0, "tokens": 16, "forwards": 7}]
    with pytest.raises(ValueError, match="3 scores"):
        intervals.per_prompt(["a", "b"], [1, 0, 0], [4, 4, 4], [1, 1, 1])


def test_intervals_of_constant_and_of_coin_flips():
    fixed = intervals.intervals(_rows([1.0] * 10, tokens=[6] * 10, forwards=[4] * 10))
    assert fixed["verifier"] == {"value": 1.0, "lo": 1.0, "hi": 1.0}
    assert fixed["tokens_per_forward"]["value"] == fixed["tokens_per_forward"]["lo"] == 1.5
    coin = intervals.intervals(_rows([1.0, 0.0] * 20))["verifier"]
    # n = 40, p = 1/2: the normal interval is 0.5 +- 1.96 * sqrt(0.25 / 40) = 0.5 +- 0.155
    assert coin["value"] == 0.5
    assert coin["lo"] == pytest.approx(0.345, abs=0.03) and coin["hi"] == pytest.approx(0.655, abs=0.03)


def test_tokens_per_forward_is_a_ratio_of_sums():
    rows = _rows([1, 1], tokens=[8, 2], forwards=[2, 2])  # per-prompt ratios 4 and 1, mean 2.5
    assert intervals.intervals(rows)["tokens_per_forward"]["value"] == 2.5
    rows = _rows([1, 1], tokens=[8, 2], forwards=[2, 6])  # ratio of sums 10/8, mean of ratios 2.17
    assert intervals.intervals(rows)["tokens_per_forward"]["value"] == 1.25


def test_paired_difference_on_the_same_prompts():
    before = _rows([1.0, 0.0] * 20, forwards=[4] * 40)
    after = _rows([1.0, 1.0] * 20, forwards=[2] * 40)
    d = intervals.paired(after, before)
    assert d["verifier"]["value"] == 0.5
    assert 0.3 < d["verifier"]["lo"] < 0.5 < d["verifier"]["hi"] < 0.7
    assert d["tokens_per_forward"] == {"value": 1.0, "lo": 1.0, "hi": 1.0}  # 2 - 1 on every resample
    same = intervals.paired(before, before)["verifier"]
    assert same == {"value": 0.0, "lo": 0.0, "hi": 0.0}


def test_paired_refuses_other_prompts():
    with pytest.raises(UsageError, match="--paired: its prompts are not this run's"):
        intervals.paired(_rows([1, 0]), _rows([1, 0, 1]))
    other = [dict(r, task_id="x" + r["task_id"]) for r in _rows([1, 0])]
    with pytest.raises(UsageError, match="--paired"):
        intervals.paired(_rows([1, 0]), other)
