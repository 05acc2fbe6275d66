"""Plot and table the first steps of CPT runs: loss, masked-token CE and grad-norm per step.

Stable-DiffCoder's warmup study at small scale (docs/BENCHMARKS.md, "Warmup and logit shift"):
each run is a training run directory with a ``metrics.jsonl`` (logged every step)::

    python tools/plot_warmup.py --out docs/img/warmup_shift.png \
        "shift, warmup=runs/w/shift_warmup" "no shift, warmup=runs/w/noshift_warmup" ...

prints a markdown table (CE at step 1 and over the last 10 steps, grad-norm over the first 10
steps and overall, mean step time) and writes a 3-panel PNG (training loss as optimised, CE of the loss positions,
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


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def _median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else float("nan")


def table(runs: dict, tail: int = 10, head: int = 10) -> str:
    """CE at step 1, mean CE of the last ``tail`` steps (all runs past their warmup there, so
    the same corruption), median and max grad-norm of the first ``head`` steps, s/step."""
    lines = [f"| run | CE step 1 | mean CE, last {tail} steps | median grad-norm, steps 1-{head} "
             f"| max grad-norm, steps 1-{head} | max grad-norm | s/step |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, rows in runs.items():
        first = [r.get("grad_norm") for r in rows[:head]]
        every = [r.get("grad_norm") for r in rows if r.get("grad_norm") is not None]
        lines.append(f"| {label} | {rows[0]['ce']:.2f} | {_mean(r['ce'] for r in rows[-tail:]):.2f}"
                     f" | {_median(first):.1f} | {max(g for g in first if g is not None):.1f} | "
                     f"{max(every):.1f} | {_mean(r['step_time_s'] for r in rows):.1f} |")
    return "\n".join(lines)


PANELS = {"loss": "training loss (weighted, per eligible token)",
          "ce": "cross entropy of the loss positions (nats)",
          "grad_norm": "grad-norm before clipping (log)"}


def plot(runs: dict, out: Path, title: str, panels: dict = PANELS, log_last: bool = True,
         xlabel: str = "step") -> None:
    """One panel per ``panels`` key (metrics.jsonl field -> panel title), a line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    for label, rows in runs.items():
        steps = [r["step"] for r in rows]
        for ax, key in zip(axes, panels):
            ax.plot(steps, [r.get(key) for r in rows], marker=".", label=label)
    for ax, name in zip(axes, panels.values()):
        ax.set_xlabel(xlabel)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    if log_last:
        axes[-1].set_yscale("log")
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
