"""Quality of a checkpoint on held-out code, and its speed/quality curve: ``eval quality``.

One report, on source files the model did not train on, that says what parallel decoding costs on
a real model: line completion (``line_completion``) under a list of decodes (``decode_list``: the
AR baseline, one token per step, the threshold sampler at each threshold, self-speculative
decoding), every figure with a bootstrap interval over prompts (``bootstrap``), the AUP of the
curve (``aup``, d3LLM), the fastest decode whose *paired* exact-match interval stays within N
points of one token per step (``within_points``), plus the token metrics of ``infill`` and the
secondary ``continuation`` accuracy. docs/evaluation.md "Quality report" defines each figure.
"""

import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import torch

from megatron_diffusion.errors import UsageError, check_int, check_range
from megatron_diffusion.evaluation import bootstrap as bs
from megatron_diffusion.evaluation import line_completion as lc
from megatron_diffusion.evaluation.aup import aup

AR_LABEL = "AR baseline"
REFERENCE_LABEL = "1 token/step"
"""The decode every other one is held against for "within N points" (the first of the curve)."""


@dataclass
class QualityConfig:
    """What ``eval quality`` measures (one field per command-line option)."""

    lines: int = 60
    """Held-out lines to complete, split evenly over the files (``line_completion``)."""
    context_tokens: int = 256
    """Tokens of the file's text before the line given as prompt (the last ones)."""
    max_line_tokens: int = 48
    """Most tokens generated per line (decoding stops at the first newline)."""
    seed: int = 0
    """Seed of the line choice and of the bootstrap resamples."""
    bootstrap_resamples: int = 1000
    """Bootstrap resamples of the prompts per interval."""
    within_points: float = 1.0
    """Exact-match points (percent) a faster decode may lose against one token per step."""
    thresholds: tuple[float, ...] = (0.9, 0.7, 0.5, 0.3)
    """Confidence thresholds of the threshold sampler (the curve's points)."""
    draft_lens: tuple[int, ...] = ()
    """Draft lengths of self-speculative decoding (``strategy=speculative``) points."""
    block_size: int | None = None
    """Inference block size of the curve; None = the checkpoint's training block size."""
    batch_size: int = 4
    """Prompts decoded together."""
    prompt_len: int = 64
    """Continuation accuracy: tokens of held-out file per prompt."""
    continuation_len: int = 32
    """Continuation accuracy: tokens generated and compared with the true continuation."""
    prompts_per_file: int = 1
    """Continuation accuracy: consecutive (prompt, continuation) windows per file."""
    seq_len: int = 128
    """Tokens per row for the next-token and masked-token metrics."""
    max_rows: int = 8
    """Rows for those metrics, split evenly over the files."""
    mask_rates: tuple[float, ...] = (0.15, 0.5, 0.9)
    """Fixed mask rates of the masked-token metrics."""

    def validate(self) -> Self:
        for name in ("lines", "context_tokens", "max_line_tokens", "bootstrap_resamples",
                     "prompt_len", "continuation_len", "prompts_per_file", "seq_len", "max_rows",
                     "batch_size"):
            check_int(f"--{name.replace('_', '-')}", getattr(self, name), lo=1)
        check_int("--seed", self.seed, lo=0)
        check_range("--within-points", self.within_points, 0, 100)
        if self.block_size is not None:
            check_int("--block-size", self.block_size, lo=1)
        if not self.thresholds or not all(0 < t <= 1 for t in self.thresholds):
            raise UsageError(f"--thresholds: got {self.thresholds!r}, expected numbers in (0, 1]")
        if not self.mask_rates or not all(0 < r < 1 for r in self.mask_rates):
            raise UsageError(f"--mask-rates: got {self.mask_rates!r}, expected numbers in (0, 1)")
        for d in self.draft_lens:
            check_int("--speculative", d, lo=1)
        return self


def progress(message: str) -> None:
    """One line on stderr per phase (a batch-job log shows where a long report is)."""
    print(f"[eval quality] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Decode:
    """One decoding strategy of the report: its label and its ``SamplerConfig`` changes."""

    label: str
    changes: dict


def decode_list(qc: QualityConfig, attention_mode: str) -> list[Decode]:
    """The decodes in report order; one more strategy is one more entry here. No AR baseline
    for a bidirectional (full-sequence) model."""
    ar = [Decode(AR_LABEL, {"ar_baseline": True})] if attention_mode != "bidirectional" else []
    return [*ar, Decode(REFERENCE_LABEL, {"strategy": "fixed"}),
            *(Decode(f"threshold {t:g}", {"strategy": "threshold", "threshold": t})
              for t in qc.thresholds),
            *(Decode(f"speculative {d}", {"strategy": "speculative", "draft_len": d})
              for d in qc.draft_lens)]


def variants(sampler, base, decodes: list[Decode]) -> dict:
    """label -> a ``DiffusionSampler`` on the same loaded weights with ``base`` + the changes."""
    from megatron_diffusion.sampling.api import DiffusionSampler

    return {d.label: DiffusionSampler(sampler.loaded, sampler.tokenizer,
                                      dataclasses.replace(base, **d.changes).validate())
            for d in decodes}


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


def score_decode(tokenizer, prompts: list, completions: list, seconds: list[float],
                 checkpoint_stops) -> dict:
    """Per-prompt values of one decode: lists over prompts (lines, ids, figures, cost)."""
    lines = [p.line_prefix + lc.completion_line(tokenizer, c.tokens, checkpoint_stops)
             for p, c in zip(prompts, completions)]
    return {
        "lines": lines, "tokens": [c.tokens for c in completions],
        "exact_match": [float(lc.exact_match(g, p.true_line)) for g, p in zip(lines, prompts)],
        "exact_match_ws": [float(lc.exact_match_ws(g, p.true_line)) for g, p in zip(lines, prompts)],
        "edit_similarity": [lc.edit_similarity(g, p.true_line) for g, p in zip(lines, prompts)],
        "distinct_tokens": [lc.distinct_tokens(c.tokens) for c in completions],
        "num_tokens": [len(c.tokens) for c in completions],
        "num_forwards": [c.num_forwards for c in completions],
        "seconds": seconds,
    }


def add_ar_agreement(values: dict, ar: dict) -> None:
    values["ar_line_agreement"] = [float(a == b) for a, b in zip(values["lines"], ar["lines"])]
    values["ar_token_agreement"] = [lc.token_agreement(t, r) for t, r in zip(values["tokens"], ar["tokens"])]


def figures(values: dict, index_RN: torch.Tensor) -> dict:
    """Every figure of one decode with its interval (None where not measured)."""
    means = ("exact_match", "exact_match_ws", "edit_similarity", "ar_line_agreement",
             "ar_token_agreement", "distinct_tokens")
    out = {k: bs.mean_estimate(values[k], index_RN) if k in values else None for k in means}
    out["reference_nll"] = (bs.ratio_estimate(values["nll_sum"], values["num_tokens"], index_RN)
                            if "nll_sum" in values else None)
    out["tokens_per_forward"] = bs.ratio_estimate(values["num_tokens"], values["num_forwards"], index_RN)
    out["tokens_per_second"] = bs.ratio_estimate(values["num_tokens"], values["seconds"], index_RN)
    return out


def within_points(em: dict[str, list[float]], reference: str, points: float,
                  index_RN: torch.Tensor) -> dict[str, dict]:
    """For every decode but ``reference``: the paired interval of its exact match minus the
    reference's, in points, and ``within`` (its lower bound ``>= -points``)."""
    out = {}
    for label, values in em.items():
        if label != reference:
            d = bs.paired_difference([100 * v for v in values], [100 * v for v in em[reference]], index_RN)
            out[label] = {"difference_points": d, "within": d["lo"] >= -points}
    return out


def fastest_within(points: list[dict], within: dict[str, dict], reference: str) -> dict | None:
    """The decode with the most tokens per forward among those ``within`` that is faster than the
    reference beyond the intervals (its lower bound above the reference's upper bound: 0.99
    against 0.98 tokens per forward is no parallel gain); None when no setting qualifies."""
    ref_hi = next(p for p in points if p["label"] == reference)["tokens_per_forward"]["hi"]
    faster = [p for p in points if within.get(p["label"], {}).get("within")
              and p["tokens_per_forward"]["lo"] > ref_hi]
    return max(faster, key=lambda p: p["tokens_per_forward"]["value"]) if faster else None


def aup_estimate(values: dict[str, dict], curve: list[str], index_RN: torch.Tensor,
                 drop: float = 5.0) -> dict:
    """AUP of the ``curve`` decodes' (tokens per forward, exact match %) points, ``y_max`` the
    best exact match of any decode in ``values``, on all prompts and on each resample."""
    def area(tpf: dict, em: dict) -> float:
        return aup([(tpf[k], em[k]) for k in curve], max(em.values()), drop=drop)

    tpf = {k: sum(v["num_tokens"]) / sum(v["num_forwards"]) for k, v in values.items()}
    em = {k: 100 * sum(v["exact_match"]) / len(v["exact_match"]) for k, v in values.items()}
    tpf_R = {k: bs.resampled_ratios(v["num_tokens"], v["num_forwards"], index_RN).tolist()
             for k, v in values.items()}
    em_R = {k: (100 * bs.resampled_means(v["exact_match"], index_RN)).tolist() for k, v in values.items()}
    samples = [area({k: tpf_R[k][r] for k in values}, {k: em_R[k][r] for k in values})
               for r in range(index_RN.shape[0])]
    return bs.estimate(area(tpf, em), torch.tensor(samples, dtype=torch.float64))


def claim(fastest: dict | None, qc: QualityConfig, num_lines: int, ar: dict | None) -> str:
    """The one sentence the report may say about speed within ``--within-points``."""
    n = f"{qc.within_points:g} point{'s' if qc.within_points != 1 else ''}"
    if fastest is None:
        return (f"no parallel setting is within {n} of {REFERENCE_LABEL} at this sample size "
                f"({num_lines} lines)")
    t = fastest["tokens_per_forward"]
    speed = ""
    if ar:
        ratio = fastest["tokens_per_second"]["value"] / ar["tokens_per_second"]["value"]
        speed = (f"; {ratio:.2f}x the AR decode's tok/s on this machine"
                 + (", i.e. slower here" if ratio < 1 else ""))
    return (f"most tokens per forward within {n} of {REFERENCE_LABEL}: {fastest['label']} "
            f"({t['value']:.2f} [{t['lo']:.2f}, {t['hi']:.2f}] tok/fwd{speed})")


def records(prompts: list, values: dict) -> list[dict]:
    """Per prompt: what was asked, what came back, and its figures (to recompute any figure)."""
    keys = [k for k in ("exact_match", "edit_similarity", "ar_line_agreement", "ar_token_agreement",
                        "distinct_tokens", "nll_sum", "num_forwards", "seconds") if k in values]
    return [{"file": p.file, "line_number": p.line_number, "prompt_ids": p.prompt_ids,
             "line_prefix": p.line_prefix, "completion_ids": values["tokens"][i],
             "line": values["lines"][i], "true_line": p.true_line,
             **{k: values[k][i] for k in keys}} for i, p in enumerate(prompts)]


def accepted_draft_length(values: dict, index_RN: torch.Tensor) -> dict:
    """Self-speculative decoding: mean drafts accepted per forward that had a draft. A forward
    commits its accepted drafts + 1 token and a row's first forward has no draft, so per row
    ``accepted = tokens - forwards`` over ``forwards - 1`` drafted forwards (a last forward cut
    at the newline counts what it committed: a slight underestimate)."""
    accepted = [t - f for t, f in zip(values["num_tokens"], values["num_forwards"])]
    drafted = [f - 1 for f in values["num_forwards"]]
    return bs.ratio_estimate(accepted, drafted, index_RN) if sum(drafted) else None


def point(decode: Decode, values: dict, prompts: list, index_RN: torch.Tensor) -> dict:
    """One decode's entry of the report: settings, cost, figures with intervals, records."""
    extra = ({"mean_accepted_draft": accepted_draft_length(values, index_RN)}
             if decode.changes.get("strategy") == "speculative" else {})
    return {"label": decode.label, "sampler": decode.changes, "block_size": values["block_size"],
            "num_forwards": sum(values["num_forwards"]), "num_tokens": sum(values["num_tokens"]),
            "wall_seconds": sum(values["seconds"]), **figures(values, index_RN), **extra,
            "records": records(prompts, values)}


def run_line_decodes(sampler, prompts: list, qc: QualityConfig,
                     decodes: list[Decode]) -> tuple[dict, int]:
    """label -> per-prompt values (``score_decode``) of each decode, cut at the first newline;
    and the number of stop ids (newline tokens and the checkpoint's stops)."""
    from megatron_diffusion.sampling.api import stop_token_ids
    from megatron_diffusion.sampling.config import SamplerConfig

    tok = sampler.tokenizer
    checkpoint_stops = stop_token_ids(tok, (), sampler.loaded.meta)
    stops = tuple(dict.fromkeys(lc.newline_token_ids(tok) + checkpoint_stops))
    block = qc.block_size or sampler.core.rules.training_block_size
    base = SamplerConfig(max_new_tokens=qc.max_line_tokens, batch_size=qc.batch_size,
                         block_size=block, stop_tokens=stops)
    ids = [p.prompt_ids for p in prompts]
    decoders = variants(sampler, base, decodes)
    decoders[REFERENCE_LABEL].generate_ids(ids[:qc.batch_size])  # warm-up, not timed
    values = {}
    for i, (label, d) in enumerate(decoders.items(), 1):
        start = time.monotonic()
        completions, seconds = d.generate_ids(ids, progress=True, label=f"eval quality: {label}")
        values[label] = score_decode(tok, prompts, completions, seconds, checkpoint_stops)
        values[label]["block_size"] = d.cfg.block_size
        em = sum(values[label]["exact_match"]) / len(prompts)
        progress(f"decode {i}/{len(decoders)} {label}: {len(prompts)} lines, exact match "
                 f"{em:.3f}, {time.monotonic() - start:.0f} s")
    return values, len(stops)


def line_part(sampler, files: list[Path], qc: QualityConfig, reference=None) -> dict:
    """The ``line_completion`` section: every decode's figures, AUP, the within-N claim."""
    prompts = lc.pick_lines(sampler.tokenizer, files, qc.lines, qc.context_tokens, qc.seed)
    sampler.core.check_prompts([p.prompt_ids for p in prompts])
    decodes = decode_list(qc, sampler.core.rules.mode)
    values, num_stops = run_line_decodes(sampler, prompts, qc, decodes)
    for label, v in values.items():
        if AR_LABEL in values and label != AR_LABEL:
            add_ar_agreement(v, values[AR_LABEL])
        if reference is not None:
            nll = lc.reference_nll(reference, [p.prompt_ids for p in prompts], v["tokens"], qc.batch_size)
            v["nll_sum"] = [s for s, _ in nll]
    index_RN = bs.resample_indices(len(prompts), qc.bootstrap_resamples, qc.seed)
    points = [point(d, values[d.label], prompts, index_RN) for d in decodes]
    curve = [d.label for d in decodes if d.label != AR_LABEL]
    within = within_points({k: values[k]["exact_match"] for k in curve}, REFERENCE_LABEL,
                           qc.within_points, index_RN)
    fastest = fastest_within(points, within, REFERENCE_LABEL)
    ar = next((p for p in points if p["label"] == AR_LABEL), None)
    kept = [REFERENCE_LABEL] + [k for k in curve if within.get(k, {}).get("within")]
    return {"num_prompts": len(prompts), "num_stop_ids": num_stops,
            "bootstrap": {"resamples": qc.bootstrap_resamples, "seed": qc.seed,
                          "confidence": bs.CONFIDENCE},
            "decodes": points,
            "aup": aup_estimate(values, curve, index_RN),
            "aup_within": aup_estimate(values, kept, index_RN, drop=float("inf")),
            "ar_baseline_aup": aup_estimate(values, [AR_LABEL], index_RN) if ar else None,
            "within_points": qc.within_points, "within": within,
            "fastest_within": fastest and {"label": fastest["label"],
                                           "tokens_per_forward": fastest["tokens_per_forward"],
                                           "tokens_per_second": fastest["tokens_per_second"],
                                           "exact_match": fastest["exact_match"]},
            "claim": claim(fastest, qc, len(prompts), ar)}


def continuation_section(sampler, files: list[Path], qc: QualityConfig) -> dict:
    """The secondary continuation-accuracy section, on the same decodes (EOS ignored)."""
    from megatron_diffusion.evaluation.continuation import continuation_part
    from megatron_diffusion.sampling.config import SamplerConfig

    block = qc.block_size or sampler.core.rules.training_block_size
    base = SamplerConfig(max_new_tokens=qc.continuation_len, batch_size=qc.batch_size,
                         block_size=block, ignore_eos=True)
    return continuation_part(variants(sampler, base, decode_list(qc, sampler.core.rules.mode)),
                             files, qc, AR_LABEL)


def quality_report(sampler, files: list[Path], qc: QualityConfig, reference=None) -> dict:
    """Every figure of the module docstring for a loaded ``DiffusionSampler``; ``reference``:
    a ``LoadedModel`` that passed ``line_completion.check_reference``, or None."""
    from megatron_diffusion.evaluation.infill import masked_metrics, next_token_metrics, reads_shifted

    loaded = sampler.loaded
    cfg, model = loaded.config, loaded.model
    start = time.monotonic()
    rows = heldout_token_rows(loaded, files, qc.seq_len, qc.max_rows)
    masked_ok = not (cfg.attention.mode == "causal" and not reads_shifted(cfg))
    lines = line_part(sampler, files, qc, reference)
    progress(f"next-token and masked-token metrics on {rows.shape[0]} rows of {qc.seq_len} tokens")
    token_metrics = {"next_token": next_token_metrics(model, cfg, rows),
                     "masked": masked_metrics(model, cfg, rows, qc.mask_rates) if masked_ok else None}
    progress("continuation accuracy (secondary)")
    continuation = continuation_section(sampler, files, qc)
    return {
        "checkpoint": str(loaded.path), "step": loaded.meta.get("step"),
        "converted_from": loaded.meta.get("converted_from"),
        "model": {"attention_mode": cfg.attention.mode, "training_block_size": cfg.attention.block_size,
                  "clean_stream": cfg.attention.clean_stream, "logit_shift": reads_shifted(cfg),
                  "objective": cfg.loss.objective},
        "reference": reference and {"checkpoint": str(reference.path), "step": reference.meta.get("step")},
        "heldout": [str(f) for f in files], "settings": dataclasses.asdict(qc),
        "rows": int(rows.shape[0]), **token_metrics,
        "line_completion": lines, "continuation": continuation,
        "machine": {"device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count()},
        "wall_seconds": time.monotonic() - start,
    }


def _cell(e: dict | None, width: int, digits: int) -> str:
    """A figure's value in a table cell; "-" where not measured."""
    return "-".rjust(width) if e is None else f"{e['value']:{width}.{digits}f}"


def format_report(r: dict) -> str:
    """The printed table."""
    lc_ = r["line_completion"]
    lines = [f"checkpoint {r['checkpoint']} (step {r['step']}), mode {r['model']['attention_mode']}, "
             f"logit shift {r['model']['logit_shift']}; {r['rows']} rows, {lc_['num_prompts']} lines "
             f"from {len(r['heldout'])} held-out files"
             + (f"; reference {r['reference']['checkpoint']}" if r["reference"] else "")]
    nt = r["next_token"]
    lines.append(f"  next-token: accuracy {nt['accuracy']:.3f}, NLL {nt['nll_nats']:.3f} nats"
                 if nt else "  next-token: no AR readout")
    for m in r["masked"] or []:
        lines.append(f"  masked @{m['mask_rate']:.2f}: accuracy {m['accuracy']:.3f}, "
                     f"CE {m['ce_nats']:.3f} nats")
    lines.append(f"  line completion ({lc_['bootstrap']['confidence']:.0%} bootstrap intervals over "
                 f"{lc_['num_prompts']} lines, {lc_['bootstrap']['resamples']} resamples):")
    lines.append(f"  {'decode':16s} {'block':>5s} {'line EM % [lo, hi]':>20s} {'edit':>5s} "
                 f"{'AR line':>7s} {'AR tok':>6s} {'refNLL':>6s} {'dist':>5s} {'tok/fwd':>7s} {'tok/s':>7s}")
    for p in lc_["decodes"]:
        em = p["exact_match"]
        lines.append(f"  {p['label']:16s} {p['block_size']:5d} {100 * em['value']:6.1f} "
                     f"[{100 * em['lo']:5.1f}, {100 * em['hi']:5.1f}] {_cell(p['edit_similarity'], 5, 3)} "
                     f"{_cell(p['ar_line_agreement'], 7, 3)} "
                     f"{_cell(p['ar_token_agreement'], 6, 3)} "
                     f"{_cell(p['reference_nll'], 6, 2)} {_cell(p['distinct_tokens'], 5, 2)} "
                     f"{_cell(p['tokens_per_forward'], 7, 2)} "
                     f"{_cell(p['tokens_per_second'], 7, 1)}")
    a, aw = lc_["aup"], lc_["aup_within"]
    lines.append(f"  line-EM AUP {a['value']:.1f} [{a['lo']:.1f}, {a['hi']:.1f}] (d3LLM's: alpha 3, "
                 f"curve cut 5 points under its best); AUP of the decodes within "
                 f"{lc_['within_points']:g} point(s) of {REFERENCE_LABEL} only: "
                 f"{aw['value']:.1f} [{aw['lo']:.1f}, {aw['hi']:.1f}]"
                 + (f"; AR baseline {lc_['ar_baseline_aup']['value']:.1f}" if lc_["ar_baseline_aup"] else ""))
    for p in lc_["decodes"]:
        if p.get("mean_accepted_draft"):
            m = p["mean_accepted_draft"]
            lines.append(f"  {p['label']}: {m['value']:.2f} [{m['lo']:.2f}, {m['hi']:.2f}] drafts "
                         f"accepted per drafted forward; output = the AR decode's (lossless)")
    lines.append(f"  {lc_['claim']}")
    c = r["continuation"]
    lines.append(f"  continuation accuracy (secondary: {c['num_prompts']} prompts, position-wise "
                 f"token match, EOS ignored):")
    for p in ([c["ar_baseline"]] if c["ar_baseline"] else []) + c["curve"]:
        lines.append(f"    {p['label']:16s} accuracy {p['accuracy']:.3f}, prefix "
                     f"{p['matching_prefix_tokens']:.2f}, {p['tokens_per_forward']:.2f} tok/fwd")
    return "\n".join(lines)


def config_from_args(args) -> QualityConfig:
    return QualityConfig(
        lines=args.lines, context_tokens=args.context_tokens, max_line_tokens=args.max_line_tokens,
        seed=args.seed, bootstrap_resamples=args.bootstrap_resamples, within_points=args.within_points,
        thresholds=tuple(args.thresholds), draft_lens=tuple(args.speculative),
        block_size=args.block_size, batch_size=args.batch_size, prompt_len=args.prompt_len,
        continuation_len=args.continuation_len, prompts_per_file=args.prompts_per_file,
        seq_len=args.seq_len, max_rows=args.max_rows, mask_rates=tuple(args.mask_rates)).validate()


def check_paths(args) -> None:
    for f in args.heldout:
        if not Path(f).is_file():
            raise UsageError(f"--heldout: {f} is not a file")
    for option, path in (("--checkpoint", args.checkpoint), ("--reference", args.reference)):
        if path is not None and not os.path.isdir(path):
            raise UsageError(f"{option}: {path!r} is not a directory")
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise UsageError(f"--out: expected a file path in an existing directory, got {args.out!r}")


def check_context(loaded, qc: QualityConfig, option: str) -> None:
    """Prompt and line must fit the model's positions."""
    limit = loaded.config.model.max_position_embeddings
    if qc.context_tokens + qc.max_line_tokens > limit:
        raise UsageError(f"--context-tokens: {qc.context_tokens} + --max-line-tokens "
                         f"{qc.max_line_tokens} exceed the {option} model's "
                         f"max_position_embeddings {limit}")


def run_quality(args) -> int:
    """``eval quality``: checks every argument, then loads, measures, prints, writes ``--out``."""
    import json

    from megatron_diffusion.loading.trained import load_model, load_sampler
    from megatron_diffusion.fileio import write_text_atomic

    qc = config_from_args(args)
    check_paths(args)
    sampler = load_sampler(args.checkpoint, max_new_tokens=qc.max_line_tokens, batch_size=qc.batch_size)
    check_context(sampler.loaded, qc, "--checkpoint")
    reference = None
    if args.reference is not None:
        reference = load_model(args.reference)
        lc.check_reference(reference, sampler.tokenizer)
        check_context(reference, qc, "--reference")
    report = quality_report(sampler, [Path(f) for f in args.heldout], qc, reference)
    print(format_report(report))
    write_text_atomic(Path(args.out), json.dumps(report, indent=2) + "\n")
    return 0
