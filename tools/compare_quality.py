"""Compare two ``eval quality --out`` reports of the same held-out lines, decode by decode, with
paired bootstrap intervals of the differences (a checkpoint before and after training:
docs/BENCHMARKS.md "The speed stages on the long CPT")::

    python tools/compare_quality.py runs/eval/cpt400.json runs/eval/distill.json

Both reports must hold the same lines (file and line number, in order), which ``eval quality``
gives for the same ``--heldout`` files, ``--lines``, ``--context-tokens`` and seed. Prints one
markdown table: per decode present in both, tokens per forward and exact line match before ->
after, each difference (after - before) with its 95% percentile interval over lines, resampled
together (2,000 resamples, seed 0), and the other figures before -> after; decodes in one report
only are named under the table. A difference whose interval excludes 0 is the one a sample this
size supports. Reports of other lines or other ``SAME_SETTINGS``, or a missing file: one line,
exit 2.
"""

import argparse
import json
import sys

from megatron_diffusion.evaluation import bootstrap as bs

RESAMPLES = 2000


def _fail(msg: str):
    print(f"compare_quality: {msg}", file=sys.stderr)
    raise SystemExit(2)


SAME_SETTINGS = ("context_tokens", "max_line_tokens", "block_size")
"""``eval quality`` settings that change every decode's lines: both reports must share them."""


def read_report(path: str) -> dict:
    """An ``eval quality`` report, read."""
    try:
        report = json.load(open(path))
    except FileNotFoundError:
        _fail(f"{path} does not exist")
    except (OSError, ValueError) as e:
        _fail(f"{path}: not JSON ({e})")
    if not isinstance(report, dict) or "decodes" not in report.get("line_completion", {}):
        _fail(f"{path}: not an eval quality --out (no line_completion decodes)")
    return report


def read_decodes(report: dict) -> dict[str, dict]:
    """``{label: decode}`` of an ``eval quality`` report."""
    return {d["label"]: d for d in report["line_completion"]["decodes"]}


def check_settings(before: dict, after: dict, after_path: str) -> None:
    b, a = before.get("settings", {}), after.get("settings", {})
    differ = [k for k in SAME_SETTINGS if b.get(k) != a.get(k)]
    if differ:
        _fail(f"{after_path}: made with other settings ({', '.join(f'{k} {b.get(k)} -> {a.get(k)}' for k in differ)})"
              "; compare reports of the same eval quality settings")


def _lines(decode: dict) -> list[tuple]:
    return [(r["file"], r["line_number"]) for r in decode["records"]]


def difference(before: dict, after: dict, index_RN) -> dict:
    """Paired figures of one decode: tokens per forward (ratio of sums) and exact match (%)."""
    def tpf(d):
        tok = [len(r["completion_ids"]) for r in d["records"]]
        fwd = [r["num_forwards"] for r in d["records"]]
        return sum(tok) / sum(fwd), bs.resampled_ratios(tok, fwd, index_RN)

    (b, b_R), (a, a_R) = tpf(before), tpf(after)
    em = [[100 * r["exact_match"] for r in d["records"]] for d in (before, after)]
    return {"tokens_per_forward": bs.estimate(a - b, a_R - b_R),
            "exact_match": bs.paired_difference(em[1], em[0], index_RN)}


def _fmt(est: dict, digits: int) -> str:
    return f"{est['value']:+.{digits}f} [{est['lo']:+.{digits}f}, {est['hi']:+.{digits}f}]"


def _arrow(before: dict, after: dict, key: str, digits: int, scale: float = 1.0) -> str:
    b, a = before.get(key), after.get(key)
    if not b or not a:
        return ""
    return f"{scale * b['value']:.{digits}f} -> {scale * a['value']:.{digits}f}"


def table(before_path: str, after_path: str) -> str:
    before_report, after_report = read_report(before_path), read_report(after_path)
    check_settings(before_report, after_report, after_path)
    before, after = read_decodes(before_report), read_decodes(after_report)
    labels = [k for k in before if k in after]
    if not labels:
        _fail(f"{before_path} and {after_path} share no decode label")
    only = [k for k in [*before, *after] if not (k in before and k in after)]
    lines = _lines(before[labels[0]])
    for label in labels:
        if _lines(before[label]) != lines or _lines(after[label]) != lines:
            _fail(f"{after_path}: decode {label!r} holds other lines than {before_path}'s; compare "
                  "reports of the same --heldout, --lines, --context-tokens and seed")
    index_RN = bs.resample_indices(len(lines), RESAMPLES, 0)
    out = ["| decode | tok/forward | difference | exact line % | difference (points) | edit sim "
           "| AR line agreement | distinct |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label in labels:
        b, a = before[label], after[label]
        d = difference(b, a, index_RN)
        out.append(f"| {label} | {_arrow(b, a, 'tokens_per_forward', 2)} | "
                   f"{_fmt(d['tokens_per_forward'], 2)} | {_arrow(b, a, 'exact_match', 1, 100)} | "
                   f"{_fmt(d['exact_match'], 1)} | {_arrow(b, a, 'edit_similarity', 3)} | "
                   f"{_arrow(b, a, 'ar_line_agreement', 2)} | {_arrow(b, a, 'distinct_tokens', 2)} |")
    if only:
        out.append(f"\n(in one report only, not compared: {', '.join(only)})")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="eval quality --out of the starting checkpoint")
    p.add_argument("after", help="eval quality --out of the trained checkpoint, same lines")
    args = p.parse_args(argv)
    print(table(args.before, args.after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
