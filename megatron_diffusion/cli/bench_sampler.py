"""``megatron-diffusion bench-sampler``: sampler throughput vs the AR baseline (docs/sampling.md).

Default: decode ``--num-prompts`` prompts with the given settings and with the AR baseline of
the same model, print one JSON object (``--json``) or a short table. ``--sweep`` runs the
threshold strategy over block sizes x thresholds and writes ``sweep.md`` (table), ``sweep.png``
(speed vs quality) and ``sweep.json`` into ``--sweep-out``. ``--hf-baseline PATH`` adds
transformers' greedy ``generate`` of an HF directory or GGUF on the same prompts
(``sampling.hf_baseline``); the three decoders are timed interleaved, once each per repeat,
and every ratio between two of them is the median of the per-repeat ratios, with its min/max
(``bench.paired_ratio``).
"""

import argparse
import json
from pathlib import Path

from megatron_diffusion.errors import UsageError
from megatron_diffusion.fileio import atomic_path, write_text_atomic
from megatron_diffusion.sampling import bench
from megatron_diffusion.cli.sample import (add_sampler_arguments, is_rank_zero, load_from_args,
                                           read_prompt_texts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sampler_arguments(parser)
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=64,
                        help="tokens per prompt (stdlib snippets)")
    parser.add_argument("--prompts", default=None,
                        help="JSON lines {\"prompt\": TEXT} instead of stdlib snippets")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time the decoders this many times, interleaved; report each "
                             "one's median run and the median of the per-repeat ratios "
                             "(with min/max)")
    parser.add_argument("--hf-baseline", default=None, metavar="HF_DIR_OR_GGUF",
                        help="also time transformers' greedy generate on the same prompts "
                             "(an HF model directory, e.g. an mcore-to-hf export, or a .gguf), "
                             "interleaved with ours; adds its figures and our ratios to it")
    parser.add_argument("--sweep", action="store_true",
                        help="speed/quality sweep over block sizes and thresholds")
    parser.add_argument("--sweep-block-sizes", default="4,8,16,32")
    parser.add_argument("--sweep-thresholds", default="0.5,0.7,0.9,0.99")
    parser.add_argument("--sweep-out", default=None, help="directory for sweep.md/png/json")


def _floats(name, text, cast):
    try:
        return [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{name}: got {text!r}, expected a comma-separated list") from None


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def run(args) -> int:
    if args.num_prompts <= 0 or args.prompt_len <= 0 or args.repeats <= 0:
        raise UsageError("--num-prompts/--prompt-len/--repeats: expected positive integers")
    block_sizes = _floats("--sweep-block-sizes", args.sweep_block_sizes, int)
    thresholds = _floats("--sweep-thresholds", args.sweep_thresholds, float)
    if not block_sizes or min(block_sizes) <= 0 or not thresholds or not all(
            0 < t <= 1 for t in thresholds):
        raise UsageError("--sweep-block-sizes/--sweep-thresholds: expected positive block sizes "
                         "and thresholds in (0, 1]")
    if args.sweep and args.sweep_out is None:
        raise UsageError("--sweep: needs --sweep-out DIR")
    if args.hf_baseline is not None:
        if args.sweep:
            raise UsageError("--hf-baseline: not with --sweep (compare one setting)")
        if not Path(args.hf_baseline).exists():
            raise UsageError(f"--hf-baseline: {args.hf_baseline} does not exist")
    text_prompts = read_prompt_texts(args.prompts) if args.prompts else None
    sampler = load_from_args(args)
    truths = None
    if text_prompts is not None:
        prompts = sampler.encode(text_prompts)[:args.num_prompts]
    else:
        full = bench.stdlib_prompts(sampler.tokenizer, args.num_prompts, args.prompt_len,
                                    continuation_len=args.max_new_tokens)
        prompts = [ids[:args.prompt_len] for ids in full]
        truths = [ids[args.prompt_len:] for ids in full]  # the held-out true continuations
        sampler.core.check_prompts(prompts)
    ar = sampler.with_settings(ar_baseline=True, kv_cache=True)
    if args.sweep:
        ar_result = bench.measure(ar, prompts, repeats=args.repeats)
        return _sweep(args, sampler, prompts, ar_result, block_sizes, thresholds, truths)
    decoders = {"diffusion": sampler, "ar": ar}
    if args.hf_baseline is not None:
        decoders["hf"] = _hf_decoder(args, sampler, prompts)
    measured = bench.measure_interleaved(decoders, prompts, repeats=args.repeats,
                                         progress=is_rank_zero())
    result, ar_result = measured["diffusion"], measured["ar"]
    out = {**_public(result), "ar_baseline": _public(ar_result),
           **_ratio("speedup_tokens_per_second", result, ar_result),
           "forwards_ratio_ar_over_diffusion": ar_result["num_forwards"] / max(result["num_forwards"], 1)}
    if "hf" in measured:
        out.update(_hf_figures(args, measured))
    if is_rank_zero():
        if args.json:
            print(json.dumps(out))
        else:
            for name, r in (("diffusion", result), ("ar baseline", ar_result),
                            ("hf generate", measured.get("hf"))):
                if r is None:
                    continue
                print(f"{name:12s} {r['tokens_per_second']:9.1f} tok/s  "
                      f"{r['tokens_per_forward']:5.2f} tok/fwd  p50 {r['latency_p50']:.3f}s  "
                      f"p90 {r['latency_p90']:.3f}s  (block {r.get('block_size', 1)}, "
                      f"batch {r['batch_size']})")
            print(f"speedup {out['speedup_tokens_per_second']:.2f}x tokens/s on {result['device']} "
                  "(median of {} interleaved pairs, {:.2f}-{:.2f})".format(
                      args.repeats, *out["speedup_tokens_per_second_spread"]))
            if "hf" in measured:
                print(f"vs hf generate: ar {out['ar_over_hf_tokens_per_second']:.2f}x, diffusion "
                      f"{out['diffusion_over_hf_tokens_per_second']:.2f}x tokens/s; ar tokens "
                      f"equal hf's on {out['hf_same_tokens_as_ar']:.0%} of prompts")
    return 0


def _hf_decoder(args, sampler, prompts):
    from megatron_diffusion.sampling.hf_baseline import HFGenerate, load_hf_model

    hf = HFGenerate(load_hf_model(args.hf_baseline), max_new_tokens=args.max_new_tokens,
                    stop_ids=sampler.core.stops, pad_id=sampler.core.rules.pad_id,
                    batch_size=sampler.cfg.batch_size or len(prompts))
    hf.check_prompts(prompts)
    return hf


def _ratio(name: str, a: dict, b: dict) -> dict:
    """``name``: the median over interleaved pairs of ``a``'s tokens/s over ``b``'s;
    ``name_spread``: [min, max] of the pairs; ``name_each``: every pair's."""
    ratio = bench.paired_ratio(a, b)
    return {name: ratio["median"], f"{name}_spread": [ratio["min"], ratio["max"]],
            f"{name}_each": ratio["each"]}


def _hf_figures(args, measured) -> dict:
    """HF generate's figures and our ratios to it (tokens/s; equal greedy output)."""
    hf, ar, diffusion = measured["hf"], measured["ar"], measured["diffusion"]
    same = [a.tokens == h.tokens for a, h in zip(ar["_completions"], hf["_completions"])]
    return {"hf_baseline": {**_public(hf), "path": str(Path(args.hf_baseline).resolve())},
            **_ratio("ar_over_hf_tokens_per_second", ar, hf),
            **_ratio("diffusion_over_hf_tokens_per_second", diffusion, hf),
            "hf_same_tokens_as_ar": sum(same) / len(same)}


def _sweep(args, sampler, prompts, ar_result, block_sizes, thresholds, truths=None) -> int:
    from megatron_diffusion.progress import Progress

    # reference: the training block size, one token per step (the model's most careful decode)
    careful = sampler.with_settings(block_size=None, strategy="fixed", steps_per_block=None,
                                    ar_baseline=False)
    ref_result = bench.measure(careful, prompts, warmup=False, repeats=args.repeats)
    reference = ref_result["_completions"]
    rows = [{**_public(ref_result), "threshold": None, "label": "reference",
             **bench.quality(sampler, prompts, reference, reference, truths)},
            {**_public(ar_result), "threshold": None, "label": "AR",
             **bench.quality(sampler, prompts, ar_result["_completions"], reference, truths)}]
    grid = [(b, t) for b in block_sizes for t in thresholds]
    bar = Progress(len(grid), "sweep", unit="point", enabled=is_rank_zero())
    for block_size, threshold in grid:
        variant = sampler.with_settings(block_size=block_size, strategy="threshold",
                                        threshold=threshold, ar_baseline=False)
        result = bench.measure(variant, prompts, warmup=False, repeats=args.repeats)
        rows.append({**_public(result), "label": f"B={block_size}",
                     **bench.quality(sampler, prompts, result["_completions"], reference, truths)})
        bar.update()
    bar.close()
    if not is_rank_zero():
        return 0
    out_dir = Path(args.sweep_out)
    out_dir.mkdir(parents=True, exist_ok=True)
    held = truths is not None
    table = ["| decode | block | threshold | tok/s | tok/forward | batched forwards | latency p50 s "
             "| agreement | NLL/token |" + (" held-out accuracy |" if held else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if held else "")]
    for r in rows:
        thr = "-" if r["label"] in ("AR", "reference") else f"{r['threshold']:g}"
        table.append(f"| {r['label']} | {r['block_size']} | {thr} | {r['tokens_per_second']:.1f} | "
                     f"{r['tokens_per_forward']:.2f} | {r['num_model_calls']} | "
                     f"{r['latency_p50']:.3f} | "
                     f"{r['agreement']:.3f} | {r['nll']:.3f} |"
                     + (f" {r['heldout_accuracy']:.3f} |" if held else ""))
    write_text_atomic(out_dir / "sweep.md", "\n".join(table) + "\n")
    write_text_atomic(out_dir / "sweep.json", json.dumps(rows, indent=1) + "\n")
    _plot(rows, out_dir / "sweep.png")
    if args.json:
        print(json.dumps({"rows": rows}))
    else:
        print("\n".join(table))
    return 0




def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["agreement", "nll"] + (["heldout_accuracy"] if "heldout_accuracy" in rows[0] else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4))
    for label in dict.fromkeys(r["label"] for r in rows):
        pts = sorted((r for r in rows if r["label"] == label),
                     key=lambda r: r["threshold"] if label.startswith("B=") else 0)
        for ax, key in zip(axes, keys):
            line = ax.plot([r["tokens_per_forward"] for r in pts], [r[key] for r in pts],
                           marker="o" if label.startswith("B=") else "*", markersize=8,
                           label=label)[0]
            if label.startswith("B="):
                for r in pts:
                    ax.annotate(f"{r['threshold']:g}", (r["tokens_per_forward"], r[key]),
                                fontsize=7, color=line.get_color(), xytext=(3, 3),
                                textcoords="offset points")
    axes[0].set_ylabel("agreement with the one-token-per-step decode")
    axes[1].set_ylabel("model NLL / token (lower is better)")
    if len(keys) == 3:
        axes[2].set_ylabel("held-out accuracy (true continuation)")
    for ax in axes:
        ax.set_xlabel("tokens per forward (hardware-independent speed)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("threshold sampler: speed vs quality (labels: thresholds; tok/s in sweep.md)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
