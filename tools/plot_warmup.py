"""Plot and table the first steps of CPT runs: loss, masked-token CE and grad-norm per step.

Stable-DiffCoder's warmup study at small scale (docs/BENCHMARKS.md, "Warmup and logit shift"):
each run is a training run directory with a ``metrics.jsonl`` (logged every step)::

    python tools/plot_warmup.py --out docs/img/warmup_shift.png \
        "shift, warmup=runs/w/shift_warmup" "no shift, warmup=runs/w/noshift_warmup" ...

prints a markdown table (CE at steps 1, 5, 10 and the last step, the largest grad-norm, mean
step time) and writes a 3-panel PNG (training loss as optimised, CE of the loss positions,
grad-norm before clipping).
"""

import argparse
import json
from pathlib import Path


def read_run(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"plot_warmup: {path} does not exist")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r]


def _at(rows, step, key):
    for r in rows:
        if r["step"] == step:
            return r.get(key)
    return None


def table(runs: dict) -> str:
    lines = ["| run | CE step 1 | CE step 5 | CE step 10 | CE last (step) | max grad-norm | "
             "s/step |", "|---|---|---|---|---|---|---|"]
    for label, rows in runs.items():
        last = rows[-1]
        cells = [f"{_at(rows, s, 'ce'):.2f}" if _at(rows, s, "ce") is not None else "-"
                 for s in (1, 5, 10)]
        grad = max(r["grad_norm"] for r in rows if r.get("grad_norm") is not None)
        secs = sum(r["step_time_s"] for r in rows) / len(rows)
        lines.append(f"| {label} | {' | '.join(cells)} | {last['ce']:.2f} ({last['step']}) | "
                     f"{grad:.1f} | {secs:.1f} |")
    return "\n".join(lines)


def plot(runs: dict, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, rows in runs.items():
        steps = [r["step"] for r in rows]
        for ax, key in zip(axes, ("loss", "ce", "grad_norm")):
            ax.plot(steps, [r.get(key) for r in rows], marker=".", label=label)
    for ax, name in zip(axes, ("training loss (weighted, per eligible token)",
                               "cross entropy of the loss positions (nats)",
                               "grad-norm (before clipping)")):
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--title", default="Block-diffusion CPT from SmolLM2-135M: first steps")
    args = p.parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, sep, run_dir = spec.rpartition("=")
        if not sep or not label:
            raise SystemExit(f"plot_warmup: {spec!r}: expected LABEL=RUN_DIR")
        runs[label] = read_run(run_dir)
    print(table(runs))
    plot(runs, args.out, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
