"""Context-parallel benchmark: peak memory per rank and step time of one long block-diffusion row.

    python tools/cp_bench.py --seq-len 2048 --cp 1,2 --repeats 2 --steps 3 --json out.json

A tiny model (``--layers``/``--hidden``/``--heads``) trains on one row of ``seq_len`` tokens
(``2 seq_len`` model tokens, ``x_t (+) x0``, block mode, shared visibility) under each CP size
in turn (``torchrun`` with ``cp`` processes, one thread each), the layouts interleaved
(A, B, A, B, ...) so that a shared machine's load falls on both. Each worker reports its step
times (after one warm-up step) and its memory: the resident set before the first step (model,
gradient buffers) and the peak resident set over the steps (``ru_maxrss``); their difference is
what a step adds (activations, the mask, the attention, the loss). The driver
prints and writes the medians per CP size. CPU figures: SDPA's CPU kernel and glibc's allocator
decide what a "peak" is; the ratios, not the absolute numbers, are the point.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _batch(seq_len: int, vocab: int, mask_id: int, block_size: int):
    import torch

    from megatron_diffusion.batch import DiffusionBatch

    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, mask_id, (1, seq_len), generator=g)
    masked = torch.rand(1, seq_len, generator=g) < 0.5
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return DiffusionBatch(tokens_BS=torch.cat([xt, x0], dim=1), labels_BL=x0,
                          loss_weights_BL=masked.float() * 2, document_ids_BL=torch.zeros_like(x0),
                          loss_mask_BL=torch.ones_like(masked),
                          t_BN=torch.full((1, seq_len // block_size), 0.5),
                          num_edits_B=torch.zeros(1, dtype=torch.long))


def worker(a) -> None:
    """One layout under torchrun: a few optimizer-free forward/backward steps."""
    import torch.distributed as dist

    from megatron_diffusion.loss.config import LossConfig
    from megatron_diffusion.masks.config import AttentionConfig
    from megatron_diffusion.model.config import ModelConfig
    from megatron_diffusion.model.gpt import transformer_config
    from megatron_diffusion.parallel.process_groups import initialize_model_parallel
    from megatron_diffusion.training.model_setup import build_training_model
    from megatron_diffusion.training.forward_backward import ForwardSpec, forward_backward

    initialize_model_parallel(1, 1, seed=1, context_parallel_size=a.cp)
    cfg = ModelConfig(num_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.heads,
                      num_query_groups=a.heads, vocab_size=512, mask_token_id=511,
                      max_position_embeddings=a.seq_len)
    chunks = build_training_model(cfg, transformer_config(cfg))
    attn = AttentionConfig(mode="block", block_size=a.block_size, visibility="shared")
    batch = _batch(a.seq_len, cfg.vocab_size, cfg.mask_token_id, a.block_size)
    times, before = [], _rss_mib()
    for i in range(a.steps + 1):
        for c in chunks:
            c.zero_grad_buffer()
        dist.barrier()
        t0 = time.perf_counter()
        forward_backward(chunks, [batch], ForwardSpec(attn, LossConfig()))
        dist.barrier()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, {"rss_before_mib": before, "peak_rss_mib": peak})
    if dist.get_rank() == 0:
        Path(a.out).write_text(json.dumps({"cp": a.cp, "step_s": times[1:], "ranks": rows}))
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(a, cp: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={cp}",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", __file__, "--worker",
           "--cp", str(cp), "--out", str(out), "--seq-len", str(a.seq_len), "--steps", str(a.steps),
           "--layers", str(a.layers), "--hidden", str(a.hidden), "--heads", str(a.heads),
           "--block-size", str(a.block_size)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"cp_bench: CP={cp} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def _summary(runs: list[dict]) -> dict:
    steps = [t for r in runs for t in r["step_s"]]
    ranks = [x for r in runs for x in r["ranks"]]
    return {"step_s_median": statistics.median(steps),
            "peak_rss_mib_per_rank": max(x["peak_rss_mib"] for x in ranks),
            "step_peak_above_start_mib": max(x["peak_rss_mib"] - x["rss_before_mib"]
                                             for x in ranks),
            "runs": len(runs)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--cp", default="1,2", help="comma-separated CP sizes")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--json", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        a.cp = int(a.cp)
        worker(a)
        return 0
    sizes = [int(x) for x in a.cp.split(",")]
    runs = {cp: [] for cp in sizes}
    with tempfile.TemporaryDirectory() as d:
        for rep in range(a.repeats):
            for cp in sizes:  # interleaved: A, B, A, B
                runs[cp].append(_launch(a, cp, Path(d) / f"cp{cp}_{rep}.json"))
    result = {"seq_len": a.seq_len, "model_tokens": 2 * a.seq_len, "layers": a.layers,
              "hidden": a.hidden, "heads": a.heads,
              "by_cp": {str(cp): _summary(r) for cp, r in runs.items()}}
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
