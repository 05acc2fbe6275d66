"""Per-prompt figures of ``onpolicy-eval`` and their bootstrap intervals (percentile intervals
over prompts, ``evaluation/bootstrap.py``; docs/onpolicy.md "Measuring a checkpoint").

A prompt's ``--samples`` completions stay together: a resample draws prompts, so the interval
says how much the figure would move on other prompts like these. ``paired`` compares two runs of
the same prompts (a checkpoint before and after training) on the same resamples: the interval of
the pass-rate difference and of the tokens-per-forward difference.
"""

from megatron_diffusion.errors import UsageError
from megatron_diffusion.evaluation import bootstrap as bs

RESAMPLES = 2000
SEED = 0


def per_prompt(task_ids: list[str], scores: list[float], tokens: list[int],
               forwards: list[int]) -> list[dict]:
    """One record per prompt: the mean score and the summed tokens and forwards of its
    completions. ``task_ids`` has one entry per prompt; the other lists hold each prompt's
    samples one after another (``len(scores)`` is a multiple of ``len(task_ids)``)."""
    n, total = len(task_ids), len(scores)
    if n == 0 or total % n or not len(tokens) == len(forwards) == total:
        raise ValueError(f"per_prompt: {total} scores, {len(tokens)} tokens and {len(forwards)} "
                         f"forwards for {n} prompts")
    k = total // n
    return [{"task_id": tid, "samples": k, "score": sum(scores[i * k:(i + 1) * k]) / k,
             "tokens": int(sum(tokens[i * k:(i + 1) * k])),
             "forwards": int(sum(forwards[i * k:(i + 1) * k]))} for i, tid in enumerate(task_ids)]


def intervals(rows: list[dict]) -> dict:
    """``{"verifier", "tokens_per_forward"}``, each ``{"value", "lo", "hi"}``."""
    index_RN = bs.resample_indices(len(rows), RESAMPLES, SEED)
    return {"verifier": bs.mean_estimate([r["score"] for r in rows], index_RN),
            "tokens_per_forward": bs.ratio_estimate([r["tokens"] for r in rows],
                                                    [r["forwards"] for r in rows], index_RN)}


def check_same_prompts(task_ids: list[str], base_rows: list[dict], where: str = "--paired") -> None:
    """One line if the base run's prompts are not ``task_ids`` in the same order."""
    base_ids = [r.get("task_id") if isinstance(r, dict) else None for r in base_rows]
    if base_ids != list(task_ids):
        raise UsageError(f"{where}: its prompts are not this run's ({len(base_ids)} vs "
                         f"{len(task_ids)} prompts, or other ids or order); compare runs of the "
                         "same --prompts and --limit")


def paired(rows: list[dict], base_rows: list[dict], where: str = "--paired") -> dict:
    """This run minus the base run of the same prompts, on shared resamples."""
    check_same_prompts([r["task_id"] for r in rows], base_rows, where)
    index_RN = bs.resample_indices(len(rows), RESAMPLES, SEED)
    tpf = bs.resampled_ratios([r["tokens"] for r in rows], [r["forwards"] for r in rows], index_RN)
    base_tpf = bs.resampled_ratios([r["tokens"] for r in base_rows],
                                   [r["forwards"] for r in base_rows], index_RN)
    value = (sum(r["tokens"] for r in rows) / sum(r["forwards"] for r in rows)
             - sum(r["tokens"] for r in base_rows) / sum(r["forwards"] for r in base_rows))
    return {"verifier": bs.paired_difference([r["score"] for r in rows],
                                             [r["score"] for r in base_rows], index_RN),
            "tokens_per_forward": bs.estimate(value, tpf - base_tpf)}
