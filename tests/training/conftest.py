import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, make_tokenizer

TINY = ["model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=4",
        "model.num_query_groups=2", "model.ffn_hidden_size=64", "model.max_position_embeddings=64",
        "data.seq_len=16", "data.micro_batch_size=2", "data.global_batch_size=4",
        "data.num_workers=0", "training.log_interval=1", "training.eval_interval=0",
        "training.save_interval=0", "training.wandb='off'", "corruption.warmup_steps=2",
        "optimizer.lr_warmup_steps=1", "training.layout_independent_init=true"]


def train_cmd(store, run_dir, *overrides, nproc=1):
    base = [sys.executable, "-m", "megatron_diffusion.cli", "train",
            "--config", str(ROOT / "examples" / "cpu_demo.yaml"), "--run-dir", str(run_dir),
            "--resume", "auto", f"data.blend=[[1.0, {store}]]", *TINY, *overrides]
    if nproc > 1:
        base = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
                "--max-restarts=0", "-m", "megatron_diffusion.cli"] + base[3:]
    return base


def env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def run_train(store, run_dir, *overrides, nproc=1, check=True, extra_env=None, timeout=300):
    proc = subprocess.run(train_cmd(store, run_dir, *overrides, nproc=nproc), cwd=ROOT,
                          env=dict(env(), **(extra_env or {})), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
    return proc


def losses(run_dir):
    import json

    return {r["step"]: r["loss"] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())}
