"""Table and plot an on-policy run: tokens/forward, verifier score and KL per step.

Seed Diffusion 3.3 at small scale (docs/BENCHMARKS.md, "On-policy step reduction")::

    python tools/plot_onpolicy.py --out docs/img/smollm2_onpolicy.png \\
        "threshold 0.1=runs/smollm2_onpolicy/train" \\
        --eval "before, sampled=runs/smollm2_onpolicy/eval_before_sampled.json" ...

prints a markdown table per step of each run (tokens/forward, steps/block, verifier, reward, KL,
loss), one table of ``onpolicy-eval`` results given with ``--eval``, and writes a 3-panel PNG.
"""

import argparse
import json
from pathlib import Path

from plot_warmup import plot, read_run  # tools/ is the script's directory

COLUMNS = ("tokens_per_forward", "steps_per_block", "verifier", "reward", "kl", "loss")


def _pair(spec: str, what: str) -> tuple[str, str]:
    label, sep, path = spec.rpartition("=")
    if not sep or not label:
        raise SystemExit(f"plot_onpolicy: {spec!r}: expected LABEL={what}")
    return label, path


def step_table(label: str, rows: list[dict]) -> str:
    lines = [f"| {label}: step | " + " | ".join(COLUMNS) + " |", "|---:|" + "---:|" * len(COLUMNS)]
    lines += [f"| {r['step']} | " + " | ".join(f"{r[k]:.4f}" for k in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def eval_table(evals: dict) -> str:
    keys = ("tokens_per_forward", "steps_per_block", "verifier", "distinct_tokens", "trajectories")
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for label, e in evals.items():
        lines.append(f"| {label} | " + " | ".join(f"{e[k]:.4g}" for k in keys) + " |")
    return "\n".join(lines)


PANELS = {"tokens_per_forward": "tokens per sampler forward (the step's trajectories)",
          "verifier": "verifier score (mean)", "kl": "KL to the reference (k3, per token)"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    p.add_argument("--eval", action="append", default=[], metavar="LABEL=EVAL_JSON")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--title", default="On-policy step reduction of SmolLM2-135M (block 4)")
    args = p.parse_args(argv)
    runs = {label: read_run(path) for label, path in (_pair(s, "RUN_DIR") for s in args.runs)}
    for label, rows in runs.items():
        print(step_table(label, rows) + "\n")
    if args.eval:
        evals = {label: json.loads(Path(path).read_text())
                 for label, path in (_pair(s, "EVAL_JSON") for s in args.eval)}
        print(eval_table(evals) + "\n")
    plot(runs, args.out, args.title, PANELS, log_last=False, xlabel="on-policy step")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
