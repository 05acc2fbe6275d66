"""``python3 -m tools.gpu_check [--dry-run] RESULTS_DIR``: run every part, write results.json.

``tools/gpu_check.sh`` is the entry point (it installs the carried wheels first). Options:
``--budget-s`` (whole run, default 330 s on the GPU: the wheel install and start-up come on top
within the 6-minute target; 240 s dry), ``--parts`` (a comma list, default all), ``--checkpoint``
(a megatron-diffusion checkpoint instead of converting the GGUF).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from tools.gpu_check.report import PARTS, Context, run_part

CAPS_GPU = {"env": 20, "ceilings": 20, "train": 130, "attention": 50, "sampler": 70,
            "pytest_gpu": 80, "cpt": 150}
"""Per-part caps in seconds; the overall budget cuts the last parts first."""
CAPS_DRY = {name: 60 for name in PARTS}


def part_functions():
    from tools.gpu_check import attention_bench, cpt, env, sampler_bench, train_bench

    return {"env": env.env_part, "ceilings": env.ceilings_part,
            "pytest_gpu": env.pytest_gpu_part, "train": train_bench.train_part,
            "attention": attention_bench.attention_part, "sampler": sampler_bench.sampler_part,
            "cpt": cpt.cpt_part}


def parse(argv=None):
    p = argparse.ArgumentParser(prog="tools/gpu_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("results_dir")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes (CI)")
    p.add_argument("--budget-s", type=float, default=None)
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--stages", default=None, help=argparse.SUPPRESS)  # the old name, refused
    p.add_argument("--checkpoint", default=None)
    a = p.parse_args(argv)
    if a.stages is not None:
        p.error("--stages is now --parts ('stage' is the corruption curriculum's mask/edit stage)")
    a.parts = [s for s in a.parts.split(",") if s]
    unknown = sorted(set(a.parts) - set(PARTS))
    if unknown:
        p.error(f"--parts: unknown {', '.join(unknown)}; expected some of {', '.join(PARTS)}")
    return a


def main(argv=None) -> int:
    a = parse(argv)
    results_dir = Path(a.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    budget = a.budget_s or (240.0 if a.dry_run else 330.0)
    caps = CAPS_DRY if a.dry_run else CAPS_GPU
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        ctx = Context(results_dir=results_dir, dry_run=a.dry_run,
                      deadline=time.monotonic() + budget, work_dir=Path(work),
                      checkpoint=a.checkpoint)
        ctx.results["meta"] = {"dry_run": a.dry_run, "budget_s": budget, "parts": a.parts,
                               "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        functions = part_functions()
        for name in a.parts:
            run_part(ctx, name, functions[name], caps[name])
        ctx.results["meta"]["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        ctx.write()
    print(summary(ctx.results))
    return 0


def summary(results: dict) -> str:
    lines = ["part         status   seconds  note"]
    for name, r in results.items():
        if name == "meta":
            continue
        rows = r.get("rows") or []
        ok = sum(row.get("status") == "ok" for row in rows)
        note = f"{ok}/{len(rows)} rows ok" if rows else (r.get("reason") or r.get("summary") or "")
        lines.append(f"{name:12s} {r['status']:8s} {r['seconds']:7.1f}  {str(note)[:90]}")
    return "\n".join(lines) + "\n" + json.dumps({"results": "results.json"})


if __name__ == "__main__":
    raise SystemExit(main())
