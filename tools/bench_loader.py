#!/usr/bin/env python
"""Loader throughput (packing + corruption in the workers) for a training config.

Compares rows/s delivered by the loader with ``--workers`` worker processes against the rows/s the
training step of the same config consumes (``--train-rows-per-s``, from metrics.jsonl's
tokens_per_s / seq_len). Usage:
  python tools/bench_loader.py --config examples/cpu_demo.yaml [--workers 1] [--batches 200] [overrides]
"""

import argparse
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--train-rows-per-s", type=float, default=None)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()

    from megatron_diffusion.config import load_config
    from megatron_diffusion.data.loader import DiffusionDataLoader
    from megatron_diffusion.corruption.factory import make_corruptor
    from megatron_diffusion.data.vocab import resolve_vocab, store_vocabulary
    from megatron_diffusion.distill.store import trajectory_rows

    cfg = load_config(a.config, a.overrides + [f"data.num_workers={a.workers}"], validate=False)
    stores = resolve_vocab(cfg)
    cfg.validate()
    loader = DiffusionDataLoader(cfg.data, corrupt_fn=make_corruptor(cfg, **store_vocabulary(stores[0])).corrupt,
                                 tokenizer_hash=stores[0].tokenizer_hash, vocab_size=stores[0].vocab_size,
                                 trajectory_rows=trajectory_rows(cfg.data))
    it = iter(loader)
    next(it)  # worker start-up
    t0 = time.perf_counter()
    for _ in range(a.batches):
        next(it)
    dt = time.perf_counter() - t0
    rows = a.batches * cfg.data.micro_batch_size
    print(f"loader: {a.workers} worker(s), {rows / dt:.0f} rows/s = {rows * cfg.data.seq_len / dt:.0f} "
          f"tokens/s (seq_len {cfg.data.seq_len}, mode {cfg.attention.mode})")
    if a.train_rows_per_s:
        print(f"training consumes {a.train_rows_per_s:.1f} rows/s: loader is "
              f"{rows / dt / a.train_rows_per_s:.0f}x faster")


if __name__ == "__main__":
    main()
