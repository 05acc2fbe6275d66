"""Part ``cpt``: a short block-diffusion CPT of SmolLM2 on the GPU, quality before and after.

The CPU recipe of docs/cpt.md scaled up: ``train --init-from`` the converted checkpoint (the
architecture comes from it), block mode with ``B = 4`` and the logit shift (the AR head is
reused), bf16 and Flex attention on the GPU, corruption warmup, on a token store of a few
standard-library packages made with the checkpoint's own tokenizer. ``eval infill`` on that
store's validation split before (the converted AR model) and after (the CPT checkpoint) gives
masked-token accuracy, ELBO and next-token figures. Runs only when the sampler part loaded
pretrained weights and ``shapes.cpt_min_s`` seconds are left; the step count is
``shapes.cpt_steps``, the row length the checkpoint's own (``eval infill`` reads rows of it).
"""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch

from tools.gpu_check.report import Skip
from tools.gpu_check.shapes import shapes_for

ROOT = Path(__file__).resolve().parents[2]
STDLIB_PACKAGES = ("json", "email", "http", "urllib", "logging", "asyncio")


def _cli(*args, timeout: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "megatron_diffusion.cli", *map(str, args)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=max(timeout, 5))
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(cmd[3:5])} exited {proc.returncode}: {' | '.join(tail)}")
    return proc


def tokenizer_of(checkpoint: Path) -> Path:
    for folder in (checkpoint, *checkpoint.parents[:3]):
        if (folder / "tokenizer.json").is_file():
            return folder / "tokenizer.json"
    raise FileNotFoundError(f"no tokenizer.json in or above {checkpoint}")


def make_store(ctx, checkpoint: Path) -> Path:
    from megatron_diffusion.data.ingest import IngestConfig, preprocess

    lib = Path(sysconfig.get_paths()["stdlib"])
    store = ctx.work_dir / "cpt_store.zarr"
    packages = STDLIB_PACKAGES[:2] if ctx.dry_run else STDLIB_PACKAGES
    preprocess(IngestConfig(inputs=[str(lib / p) for p in packages], output=str(store),
                            tokenizer=str(tokenizer_of(checkpoint)), glob="*.py",
                            validation_fraction=0.1))
    return store


def checkpoint_seq_len(checkpoint: Path) -> int:
    """The row length recorded in the checkpoint: ``eval infill`` reads rows of that length, so
    the CPT uses it too and the before/after figures are over the same rows."""
    from megatron_diffusion.training.checkpoint import read_meta, resolve_checkpoint

    return int(read_meta(resolve_checkpoint(checkpoint))["config"]["data"]["seq_len"])


def run_config(sh, store: Path, cuda: bool, seq_len: int) -> dict:
    steps = sh.cpt_steps
    return {"model": {"logit_shift": True, "params_dtype": "bfloat16" if cuda else "float32",
                      "attention_backend": "flex" if cuda else "sdpa"},
            "attention": {"mode": "block", "block_size": 4, "visibility": "shared"},
            "data": {"blend": [[1.0, str(store)]], "seq_len": seq_len,
                     "micro_batch_size": 8 if cuda else 2, "global_batch_size": 16 if cuda else 2,
                     "num_workers": 2 if cuda else 0},
            "corruption": {"warmup_steps": max(steps // 4, 1)},
            "optimizer": {"lr": 5e-5, "min_lr": 5e-6, "lr_warmup_steps": max(steps // 10, 1)},
            "training": {"train_iters": steps, "log_interval": max(steps // 10, 1),
                         "eval_interval": 0, "save_interval": steps, "wandb": "off"}}


def infill(ctx, checkpoint, store: Path, name: str) -> dict:
    out = ctx.work_dir / f"infill_{name}"
    _cli("eval", "infill", "--checkpoint", checkpoint, "--data", store, "--out", out,
         "--mask-rates", "0.15,0.5,0.9", timeout=ctx.left() - 5)
    return json.loads((out / "infill.json").read_text())


def cpt_part(ctx) -> dict:
    import yaml

    sh = shapes_for(ctx.dry_run)
    sm = ctx.shared.get("sampler_model")
    if sm is None or sm.checkpoint is None:
        raise Skip("needs the converted SmolLM2 checkpoint from the sampler part "
                   "(random weights have nothing to continue from)")
    if ctx.dry_run and sm.source != "checkpoint":
        raise Skip("dry run: a CPT of SmolLM2 on a CPU takes minutes; pass a tiny --checkpoint "
                   "(the CI test does) to run this part's code")
    if ctx.left() < sh.cpt_min_s:
        raise Skip(f"time budget: {ctx.left():.0f} s left, needs {sh.cpt_min_s:.0f} s")
    cuda = torch.cuda.is_available()
    store = make_store(ctx, sm.checkpoint)
    seq_len = checkpoint_seq_len(sm.checkpoint)
    out = {"init_from": str(sm.checkpoint), "store": str(store), "steps": sh.cpt_steps,
           "seq_len": seq_len}
    ctx.partial.update(out)
    out["before"] = ctx.partial["before"] = infill(ctx, sm.checkpoint, store, "before")
    config = ctx.work_dir / "cpt.yaml"
    config.write_text(yaml.safe_dump(run_config(sh, store, cuda, seq_len)))
    run_dir = ctx.work_dir / "cpt_run"
    _cli("train", "--config", config, "--run-dir", run_dir, "--init-from", sm.checkpoint,
         timeout=ctx.left() - 10)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    out["metrics"] = [{k: m.get(k) for k in ("step", "loss", "tokens_per_s", "mfu", "stage")}
                      for m in metrics]
    out["after"] = infill(ctx, run_dir, store, "after")
    return out
