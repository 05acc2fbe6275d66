"""Bootstrap confidence intervals over prompts (Efron & Tibshirani, *An Introduction to the
Bootstrap*, ch. 13: the percentile interval).

A figure of ``eval quality`` is a statistic of ``N`` per-prompt values (a mean, or a ratio of
sums such as tokens per forward = sum of tokens / sum of forwards). Its interval: draw ``R``
resamples of the ``N`` prompts with replacement (``resample_indices``, seeded), compute the
statistic on each, and take the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
percentiles of the ``R`` values (linear interpolation, numpy's default). Every figure of one
report uses the *same* index matrix, so two decodes of the same prompts are compared on the same
resamples: ``paired_difference`` is the interval of a difference of means, which is much
narrower than the two separate intervals when the decodes agree on most prompts.

Plain torch; shapes: ``N`` prompts, ``R`` resamples.
"""

import torch

CONFIDENCE = 0.95
"""Two-sided coverage of every interval of the report."""


def resample_indices(num_items: int, num_resamples: int, seed: int) -> torch.Tensor:
    """``[R, N]`` int64: row ``r`` holds the prompt indices of resample ``r`` (with replacement)."""
    if num_items < 1 or num_resamples < 1:
        raise ValueError(f"resample_indices: got {num_items} items and {num_resamples} resamples, "
                         "expected >= 1 of each")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_items, (num_resamples, num_items), generator=g)


def percentile_interval(samples_R: torch.Tensor, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """``(lo, hi)``: the central ``confidence`` percentile interval of the resampled values."""
    tail = (1.0 - confidence) / 2
    q = torch.tensor([tail, 1.0 - tail], dtype=torch.float64)
    lo, hi = torch.quantile(samples_R.double(), q).tolist()
    return lo, hi


def estimate(value: float, samples_R: torch.Tensor, confidence: float = CONFIDENCE) -> dict:
    """``{"value", "lo", "hi"}``: the figure on all prompts and its percentile interval."""
    lo, hi = percentile_interval(samples_R, confidence)
    return {"value": float(value), "lo": lo, "hi": hi}


def resampled_means(values_N, index_RN: torch.Tensor) -> torch.Tensor:
    """``[R]``: the mean of ``values_N`` in each resample."""
    return torch.as_tensor(values_N, dtype=torch.float64)[index_RN].mean(dim=1)


def resampled_ratios(numerators_N, denominators_N, index_RN: torch.Tensor) -> torch.Tensor:
    """``[R]``: ``sum(numerators) / sum(denominators)`` in each resample (the ratio of sums inside
    each resample, not a mean of per-prompt ratios: tokens per forward weighs long completions
    more, as the figure on all prompts does)."""
    num_N = torch.as_tensor(numerators_N, dtype=torch.float64)
    den_N = torch.as_tensor(denominators_N, dtype=torch.float64)
    return num_N[index_RN].sum(dim=1) / den_N[index_RN].sum(dim=1)


def mean_estimate(values_N, index_RN: torch.Tensor, confidence: float = CONFIDENCE) -> dict:
    """The mean of per-prompt ``values_N`` with its interval."""
    value = torch.as_tensor(values_N, dtype=torch.float64).mean()
    return estimate(value, resampled_means(values_N, index_RN), confidence)


def ratio_estimate(numerators_N, denominators_N, index_RN: torch.Tensor,
                   confidence: float = CONFIDENCE) -> dict:
    """``sum(numerators) / sum(denominators)`` with its interval."""
    value = sum(map(float, numerators_N)) / sum(map(float, denominators_N))
    return estimate(value, resampled_ratios(numerators_N, denominators_N, index_RN), confidence)


def paired_difference(a_N, b_N, index_RN: torch.Tensor, confidence: float = CONFIDENCE) -> dict:
    """``mean(a) - mean(b)`` of two figures of the same prompts, resampled together."""
    diff_N = torch.as_tensor(a_N, dtype=torch.float64) - torch.as_tensor(b_N, dtype=torch.float64)
    return mean_estimate(diff_N, index_RN, confidence)
