"""Quality of a checkpoint on held-out code, and its speed/quality curve: ``eval quality``.

One report, on source files the model did not train on (``--heldout``), that says what parallel
decoding costs on a real model (issue 12, item 5):

* **Next-token accuracy and NLL** of the clean rows under a causal mask, output ``i - 1`` read
  as the prediction of token ``i`` (``infill.next_token_metrics``), for checkpoints with an AR
  readout: causal / AR-objective checkpoints and logit-shift checkpoints (whose AR baseline
  decode reads exactly this). None otherwise.
* **Masked-token accuracy and cross entropy** at fixed mask rates, in the checkpoint's own layout
  and readout (``infill.masked_metrics``, the numbers of ``eval infill``).
* **Continuation accuracy of greedy decoding**: the prompt is a prefix of a held-out file (from
  its first top-level ``def``/``class``, as ``bench-sampler``'s stdlib prompts), the model
  generates exactly ``continuation_len`` tokens (EOS ignored, so every decode is scored over the
  same positions), and each generated token is compared with the file's true next token at the
  same position (``bench.heldout_accuracy``); also the mean matching prefix (tokens before the
  first divergence). Measured for the AR baseline (one token per
  forward, KV cache), the block sampler at ``block_size`` with one token per step (the careful
  decode, ``strategy=fixed``), and the threshold sampler at each ``threshold``: tokens per
  forward, accuracy and tokens/s per point (``bench.measure``), the speed/quality curve.
* **AUP**, d3LLM's *Accuracy Under Parallelism* (Qian et al., "d3LLM", hao-ai-lab/d3LLM
  ``AUP_leaderboard/aup_utils.py`` and the AUP blog post), of the block sampler's curve: with the
  points ``(rho_i, y_i)`` sorted by tokens per forward ``rho`` and ``y`` the accuracy in percent,
  ``y_min = y_1 - drop`` (``y_1``: the accuracy of the least parallel point) and only points with
  ``y_i >= y_min`` kept,

      AUP = rho_1 y_1 + 1/2 sum_{i>=2} (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})),
      W(y) = min(exp(-alpha (1 - y / y_max)), 1),

  ``alpha = 3`` and ``y_max`` the best accuracy of any decode on the task (the AR baseline's
  included). d3LLM uses ``drop = 5`` points (``aup``); the headline figure of issue 12 keeps the
  points within 1 point of the one-token-per-step accuracy (``aup_within_1pt``). The AR
  baseline's own AUP is ``1 x y_AR``.
"""

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Self
from pathlib import Path

import torch

from megatron_diffusion.errors import UsageError, check_int


@dataclass
class QualityConfig:
    """What ``eval quality`` measures (one field per command-line option)."""

    thresholds: tuple[float, ...] = (0.9, 0.7, 0.5, 0.3)
    """Confidence thresholds of the threshold sampler (the curve's points)."""
    block_size: int | None = None
    """Inference block size of the curve; None = the checkpoint's training block size."""
    prompt_len: int = 64
    """Tokens of held-out file per prompt."""
    continuation_len: int = 32
    """Tokens generated per prompt and compared with the true continuation."""
    prompts_per_file: int = 1
    """Consecutive (prompt, continuation) windows taken from each held-out file."""
    seq_len: int = 128
    """Tokens per row for the next-token and masked-token metrics."""
    max_rows: int = 8
    """Rows for those metrics, split evenly over the files."""
    mask_rates: tuple[float, ...] = (0.15, 0.5, 0.9)
    """Fixed mask rates of the masked-token metrics."""
    batch_size: int = 4
    """Prompts decoded together."""

    def validate(self) -> Self:
        for name in ("prompt_len", "continuation_len", "prompts_per_file", "seq_len", "max_rows",
                     "batch_size"):
            check_int(f"--{name.replace('_', '-')}", getattr(self, name), lo=1)
        if self.block_size is not None:
            check_int("--block-size", self.block_size, lo=1)
        if not self.thresholds or not all(0 < t <= 1 for t in self.thresholds):
            raise UsageError(f"--thresholds: got {self.thresholds!r}, expected numbers in (0, 1]")
        if not self.mask_rates or not all(0 < r < 1 for r in self.mask_rates):
            raise UsageError(f"--mask-rates: got {self.mask_rates!r}, expected numbers in (0, 1)")
        return self


def aup(points: list[tuple[float, float]], y_max: float | None = None, *, alpha: float = 3.0,
        drop: float = 5.0) -> float:
    """d3LLM's Accuracy Under Parallelism of ``(tokens per forward, accuracy in %)`` points (see
    the module docstring); ``y_max`` defaults to the best accuracy among ``points``."""
    if not points or any(rho <= 0 for rho, _ in points):
        raise ValueError(f"aup: expected points with tokens per forward > 0, got {points!r}")
    pts = sorted(points, key=lambda p: p[0])
    y_max = max(y for _, y in pts) if y_max is None else y_max
    if y_max <= 0:
        return 0.0  # every accuracy is 0: no area

    def weight(y):
        return min(math.exp(-alpha * (1 - y / y_max)), 1.0)

    kept = [(rho, y) for rho, y in pts if y >= pts[0][1] - drop]
    total = kept[0][0] * kept[0][1]
    for (rho0, y0), (rho1, y1) in zip(kept, kept[1:]):
        total += 0.5 * (rho1 - rho0) * (y1 * weight(y1) + y0 * weight(y0))
    return total


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


def heldout_token_rows(loaded, files: list[Path], seq_len: int, max_rows: int) -> torch.Tensor:
    """Rows for the next-token / masked-token metrics, ``ceil(max_rows / files)`` per file."""
    from megatron_diffusion.evaluation.infill import heldout_rows

    per_file = -(-max_rows // len(files))
    rows = []
    for path in files:
        try:
            rows.append(heldout_rows(path, loaded, seq_len, per_file))
        except UsageError as e:
            raise UsageError(str(e).replace("--data:", "--heldout:", 1) + " (lower --seq-len)") from None
    return torch.cat(rows)[:max_rows]


def _variant(sampler, base, **changes):
    """A ``DiffusionSampler`` on the same loaded weights with other settings; EOS is ignored, so
    every decode generates exactly ``max_new_tokens`` and is scored over the same positions."""
    from megatron_diffusion.sampling.api import DiffusionSampler

    return DiffusionSampler(sampler.loaded, sampler.tokenizer,
                            dataclasses.replace(base, **changes, ignore_eos=True).validate())


def decode_point(sampler, prompts, truths, label: str) -> dict:
    """One point of the curve: ``bench.measure``'s speed and the continuation accuracy."""
    from megatron_diffusion.sampling.bench import measure

    r = measure(sampler, prompts, warmup=False)
    cfg = sampler.cfg
    return {"label": label, "block_size": cfg.block_size, "strategy": cfg.strategy,
            "threshold": cfg.threshold if cfg.strategy == "threshold" else None,
            "tokens_per_forward": r["tokens_per_forward"], "tokens_per_second": r["tokens_per_second"],
            "num_forwards": r["num_forwards"], "num_tokens": r["num_tokens"],
            "wall_seconds": r["wall_seconds"],
            "accuracy": continuation_accuracy([c.tokens for c in r["_completions"]], truths),
            "matching_prefix_tokens": matching_prefix([c.tokens for c in r["_completions"]], truths)}


def decoding_curve(sampler, prompts, truths, qc: QualityConfig) -> tuple[dict | None, list[dict]]:
    """(the AR baseline's point or None, the block sampler's points: one token per step first)."""
    from megatron_diffusion.sampling.config import SamplerConfig

    rules = sampler.core.rules
    block = qc.block_size or rules.training_block_size
    base = SamplerConfig(max_new_tokens=qc.continuation_len, batch_size=qc.batch_size)
    ar = None
    first = _variant(sampler, base, block_size=block, strategy="fixed")
    first.generate_ids(prompts[:1])  # warm-up (allocations, first-call overheads), not timed
    if rules.mode != "bidirectional":
        ar = decode_point(_variant(sampler, base, ar_baseline=True), prompts, truths, "AR baseline")
    curve = [decode_point(first, prompts, truths, "1 token/step")]
    for t in qc.thresholds:
        v = _variant(sampler, base, block_size=block, strategy="threshold", threshold=t)
        curve.append(decode_point(v, prompts, truths, f"threshold {t:g}"))
    return ar, curve


def summarize_curve(ar: dict | None, curve: list[dict]) -> dict:
    """AUP (d3LLM's 5-point and the headline 1-point form) and the fastest point within 1 point
    of the one-token-per-step accuracy, with its speedup over the AR baseline."""
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


def decoding_part(sampler, files: list[Path], qc: QualityConfig) -> dict:
    """The continuation-accuracy curve, its AUP and its best point."""
    prompts, truths = heldout_windows(sampler.tokenizer, files, qc.prompt_len, qc.continuation_len,
                                      qc.prompts_per_file)
    sampler.core.check_prompts(prompts)
    ar, curve = decoding_curve(sampler, prompts, truths, qc)
    return {"num_prompts": len(prompts), "ar_baseline": ar, "curve": curve, **summarize_curve(ar, curve)}


def quality_report(sampler, files: list[Path], qc: QualityConfig) -> dict:
    """Every metric of the module docstring for a loaded ``DiffusionSampler``."""
    from megatron_diffusion.evaluation.infill import masked_metrics, next_token_metrics, reads_shifted

    loaded = sampler.loaded
    cfg, model = loaded.config, loaded.model
    start = time.monotonic()
    rows = heldout_token_rows(loaded, files, qc.seq_len, qc.max_rows)
    masked_ok = not (cfg.attention.mode == "causal" and not reads_shifted(cfg))
    decoding = decoding_part(sampler, files, qc)
    return {
        "checkpoint": str(loaded.path), "step": loaded.meta.get("step"),
        "converted_from": loaded.meta.get("converted_from"),
        "model": {"attention_mode": cfg.attention.mode, "training_block_size": cfg.attention.block_size,
                  "clean_stream": cfg.attention.clean_stream, "logit_shift": reads_shifted(cfg),
                  "objective": cfg.loss.objective},
        "heldout": [str(f) for f in files], "settings": dataclasses.asdict(qc),
        "rows": int(rows.shape[0]),
        "next_token": next_token_metrics(model, cfg, rows),
        "masked": masked_metrics(model, cfg, rows, qc.mask_rates) if masked_ok else None,
        **decoding,
        "machine": {"device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count()},
        "wall_seconds": time.monotonic() - start,
    }


def format_report(r: dict) -> str:
    """The printed table."""
    lines = [f"checkpoint {r['checkpoint']} (step {r['step']}), mode {r['model']['attention_mode']}, "
             f"logit shift {r['model']['logit_shift']}; {r['rows']} rows, {r['num_prompts']} "
             f"prompts from {len(r['heldout'])} held-out files"]
    nt = r["next_token"]
    lines.append(f"  next-token: accuracy {nt['accuracy']:.3f}, NLL {nt['nll_nats']:.3f} nats"
                 if nt else "  next-token: no AR readout")
    for m in r["masked"] or []:
        lines.append(f"  masked @{m['mask_rate']:.2f}: accuracy {m['accuracy']:.3f}, "
                     f"CE {m['ce_nats']:.3f} nats")
    lines.append(f"  {'decode':16s} {'block':>5s} {'tok/fwd':>8s} {'accuracy':>9s} {'prefix':>7s} "
                 f"{'tok/s':>8s}")
    for p in ([r["ar_baseline"]] if r["ar_baseline"] else []) + r["curve"]:
        lines.append(f"  {p['label']:16s} {p['block_size']:5d} {p['tokens_per_forward']:8.2f} "
                     f"{p['accuracy']:9.3f} {p['matching_prefix_tokens']:7.2f} {p['tokens_per_second']:8.1f}")
    best = r["best_within_1pt"]
    speed = best.get("speedup_tokens_per_second_over_ar")
    lines.append(f"  AUP {r['aup']:.1f} (d3LLM: alpha 3, within 5 points), within 1 point "
                 f"{r['aup_within_1pt']:.1f}; AR baseline {r['ar_baseline_aup'] or 0:.1f}")
    lines.append(f"  fastest within 1 point: {best['label']} ({best['tokens_per_forward']:.2f} tok/fwd"
                 + (f", {speed:.2f}x AR tok/s)" if speed else ")"))
    return "\n".join(lines)


def run_quality(args) -> int:
    """``eval quality``: checks every argument, then loads, measures, prints, writes ``--out``."""
    import json

    from megatron_diffusion.fileio import write_text_atomic

    qc = QualityConfig(thresholds=tuple(args.thresholds), block_size=args.block_size,
                       prompt_len=args.prompt_len, continuation_len=args.continuation_len,
                       prompts_per_file=args.prompts_per_file, seq_len=args.seq_len,
                       max_rows=args.max_rows, mask_rates=tuple(args.mask_rates),
                       batch_size=args.batch_size).validate()
    files = [Path(f) for f in args.heldout]
    for f in files:
        if not f.is_file():
            raise UsageError(f"--heldout: {f} is not a file")
    if not os.path.isdir(args.checkpoint):
        raise UsageError(f"--checkpoint: {args.checkpoint!r} is not a directory")
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise UsageError(f"--out: expected a file path in an existing directory, got {args.out!r}")
    from megatron_diffusion.checkpoint.loading import load_sampler

    sampler = load_sampler(args.checkpoint, max_new_tokens=qc.continuation_len, batch_size=qc.batch_size)
    report = quality_report(sampler, files, qc)
    print(format_report(report))
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    return 0
