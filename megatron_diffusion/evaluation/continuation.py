"""Continuation accuracy of greedy decoding: the secondary, position-wise figure of ``eval quality``.

The prompt is a prefix of a held-out file (from its first top-level ``def``/``class``, as
``bench-sampler``'s stdlib prompts), the model generates exactly ``continuation_len`` tokens (EOS
ignored, so every decode is scored over the same positions), and each generated token is compared
with the file's true next token at the same position (``bench.heldout_accuracy``); also the mean
matching prefix (tokens before the first divergence). A position-wise match cannot tell good code
from garbage once a decode drifts by one token (an AR model scores a few percent), so the report's
headline is line completion (``line_completion``); this section is kept for comparison with
earlier reports, under ``continuation`` in the JSON, with its own AUP (``aup.aup``) and fastest
point within 1 point of the one-token-per-step accuracy (point estimates, no intervals).
"""

from pathlib import Path

from megatron_diffusion.errors import UsageError
from megatron_diffusion.evaluation.aup import aup


def continuation_accuracy(outputs: list[list[int]], truths: list[list[int]]) -> float:
    """Mean over prompts of the fraction of true-continuation positions reproduced exactly
    (a missing position, after an early stop, counts as wrong)."""
    from megatron_diffusion.sampling.bench import heldout_accuracy

    if len(outputs) != len(truths) or not truths:
        raise ValueError(f"continuation_accuracy: {len(outputs)} outputs for {len(truths)} truths")
    return sum(heldout_accuracy(o, t) for o, t in zip(outputs, truths)) / len(truths)


def matching_prefix(outputs: list[list[int]], truths: list[list[int]]) -> float:
    """Mean number of leading generated tokens equal to the true continuation (the run before
    the first divergence; after it, positions rarely line up again)."""
    def run(o, t):
        return next((i for i, (a, b) in enumerate(zip(o, t)) if a != b), min(len(o), len(t)))

    return sum(run(o, t) for o, t in zip(outputs, truths)) / max(len(truths), 1)


def heldout_windows(tokenizer, files: list[Path], prompt_len: int, continuation_len: int,
                    per_file: int) -> tuple[list[list[int]], list[list[int]]]:
    """(prompts, true continuations): ``per_file`` consecutive windows of each file, from its
    first top-level ``def``/``class`` line (skipping licence headers and module docstrings)."""
    prompts, truths = [], []
    width = prompt_len + continuation_len
    for path in files:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        first = next((i for i, line in enumerate(lines) if line.startswith(("def ", "class "))), 0)
        ids = tokenizer.encode("".join(lines[first:]))
        n = min(per_file, len(ids) // width)
        if n == 0:
            raise UsageError(f"--heldout: {path} has {len(ids)} tokens from its first def/class, fewer "
                             f"than --prompt-len + --continuation-len = {width}")
        for k in range(n):
            window = ids[k * width:(k + 1) * width]
            prompts.append(window[:prompt_len])
            truths.append(window[prompt_len:])
    return prompts, truths


def decode_point(sampler, prompts, truths, label: str) -> dict:
    """One point of the curve: ``bench.measure``'s speed and the continuation accuracy."""
    from megatron_diffusion.sampling.bench import measure

    r = measure(sampler, prompts, warmup=False)
    cfg = sampler.cfg
    outputs = [c.tokens for c in r["_completions"]]
    return {"label": label, "block_size": cfg.block_size, "strategy": cfg.strategy,
            "threshold": cfg.threshold if cfg.strategy == "threshold" else None,
            "tokens_per_forward": r["tokens_per_forward"], "tokens_per_second": r["tokens_per_second"],
            "num_forwards": r["num_forwards"], "num_tokens": r["num_tokens"],
            "wall_seconds": r["wall_seconds"], "accuracy": continuation_accuracy(outputs, truths),
            "matching_prefix_tokens": matching_prefix(outputs, truths)}


def summarize_curve(ar: dict | None, curve: list[dict]) -> dict:
    """AUP (d3LLM's 5-point and a 1-point form) and the fastest point within 1 point of the
    one-token-per-step accuracy (``curve[0]``), with its speedup over the AR baseline."""
    pts = [(p["tokens_per_forward"], 100 * p["accuracy"]) for p in curve]
    y_max = max([y for _, y in pts] + ([100 * ar["accuracy"]] if ar else []))
    y1 = 100 * curve[0]["accuracy"]
    within = [p for p in curve if 100 * p["accuracy"] >= y1 - 1]
    best = max(within, key=lambda p: p["tokens_per_forward"])
    out = {"aup": aup(pts, y_max, drop=5.0), "aup_within_1pt": aup(pts, y_max, drop=1.0),
           "aup_alpha": 3.0, "y_max_percent": y_max, "one_token_per_step_accuracy_percent": y1,
           "ar_baseline_aup": aup([(ar["tokens_per_forward"], 100 * ar["accuracy"])], y_max) if ar else None,
           "best_within_1pt": {"label": best["label"], "tokens_per_forward": best["tokens_per_forward"],
                               "tokens_per_second": best["tokens_per_second"],
                               "accuracy": best["accuracy"]}}
    if ar:
        out["best_within_1pt"]["speedup_tokens_per_second_over_ar"] = (
            best["tokens_per_second"] / ar["tokens_per_second"])
    return out


def continuation_part(variants: dict, files: list[Path], qc, ar_label: str) -> dict:
    """The continuation-accuracy curve of ``variants`` (label -> ``DiffusionSampler`` with
    ``ignore_eos``, the AR baseline under ``ar_label`` if present, one token per step first
    among the others), its AUP and best point: the JSON's ``continuation`` section."""
    first = next(iter(variants.values()))
    prompts, truths = heldout_windows(first.tokenizer, files, qc.prompt_len, qc.continuation_len,
                                      qc.prompts_per_file)
    first.core.check_prompts(prompts)
    from megatron_diffusion.progress import Progress

    points = {}
    with Progress(len(variants), "eval quality: continuation", unit="decode") as bar:
        for label, v in variants.items():
            points[label] = decode_point(v, prompts, truths, label)
            bar.update()
    ar = points.pop(ar_label, None)
    curve = list(points.values())
    return {"num_prompts": len(prompts), "ar_baseline": ar, "curve": curve, **summarize_curve(ar, curve)}
