#!/usr/bin/env python
"""Loader start-up time and index size on a synthetic store, extrapolated to 1T tokens.

    python tools/bench_data_index.py --tokens 50e6 --mean-doc-len 1300 --seq-len 8192

Writes a store of random tokens with log-normal document lengths (``StoreWriter``, the layout
``preprocess`` writes), then measures: building the packing index (cold, what one rank or an
offline job does once), opening it again (warm, what every rank does at start-up), the bytes of
the cached index, the resident memory of a rank after start-up, and rows/s read by one process.
Index bytes and build time grow linearly in documents and rows, so the 1T-token figures scale
the measured ones by ``1e12 / tokens``. Prints one JSON object.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_synthetic(path: Path, num_tokens: int, mean_doc_len: float, vocab: int, seed: int) -> dict:
    from megatron_diffusion.data.writer import StoreWriter

    rng = np.random.default_rng(seed)
    sigma = 1.0
    mu = np.log(mean_doc_len) - sigma**2 / 2
    writer = StoreWriter(path, split_seed=seed, validation_fraction=0.001)
    t0, written = time.perf_counter(), 0
    while written < num_tokens:
        lengths = np.maximum(2, rng.lognormal(mu, sigma, 20_000).astype(np.int64))
        tokens = rng.integers(3, vocab, int(lengths.sum()), dtype=np.int32)
        tokens[np.cumsum(lengths) - 1] = 0  # EOS closes every document
        writer.append(tokens, lengths, np.zeros(len(lengths), dtype=np.int32))
        written += int(lengths.sum())
    attrs = writer.close({"tokenizer_hash": "synthetic", "vocab_size": vocab, "eos_id": 0,
                          "mask_id": 1, "pad_id": 2, "mode": "cpt", "source": {"synthetic": True}})
    return {"write_s": time.perf_counter() - t0, "num_tokens": attrs["num_tokens"], "num_docs": attrs["num_docs"]}


class _CountOnly:
    """Stands in for the tokens appender: counts tokens, writes none (index-only stores)."""

    def __init__(self, array):
        self.array, self.written = array, 0

    def append(self, values):
        self.written += len(values)

    def close(self):
        self.array.resize((self.written,))  # unwritten chunks cost no bytes and are never read
        return self.written


def write_index_only(path: Path, num_docs: int, mean_doc_len: float, seed: int) -> dict:
    """A store with ``num_docs`` real offsets but no token bytes: times index building at scale."""
    from megatron_diffusion.data.writer import StoreWriter

    rng = np.random.default_rng(seed)
    mu = np.log(mean_doc_len) - 0.5
    writer = StoreWriter(path, split_seed=seed, validation_fraction=0.001)
    writer.arrays["tokens"] = _CountOnly(writer.arrays["tokens"].array)
    t0 = time.perf_counter()
    for i in range(0, num_docs, 1 << 20):
        n = min(1 << 20, num_docs - i)
        lengths = np.maximum(2, rng.lognormal(mu, 1.0, n).astype(np.int64))
        no_tokens = np.broadcast_to(np.int32(0), (int(lengths.sum()),))  # a view: nothing allocated
        writer.append(no_tokens, lengths, np.zeros(n, np.int32))
    attrs = writer.close({"tokenizer_hash": "synthetic", "vocab_size": 50_000, "eos_id": 0,
                          "mask_id": 1, "pad_id": 2, "mode": "cpt", "source": {"synthetic": True}})
    return {"write_s": time.perf_counter() - t0, "num_tokens": attrs["num_tokens"],
            "num_docs": attrs["num_docs"], "index_only": True}


def measure_rank(store: str, seq_len: int, rows: int) -> dict:
    """Start-up of one rank with the index cached: open + first rows (run in a fresh process)."""
    from megatron_diffusion.data.config import DataConfig
    from megatron_diffusion.data.loader import PackedDataset

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    ds = PackedDataset(DataConfig(blend=[(1.0, store)], seq_len=seq_len, num_workers=0))
    startup = time.perf_counter() - t0
    g = np.random.default_rng(0).integers(0, ds.samples_per_epoch, rows)
    rss1 = _rss_mb()
    t0 = time.perf_counter()
    for i in g:
        ds[int(i)]
    read = time.perf_counter() - t0
    return {"startup_s": startup, "rss_before_mb": rss0, "rss_after_startup_mb": rss1,
            "rows_per_s": rows / read if rows else None, "samples_per_epoch": ds.samples_per_epoch}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=float, default=50e6)
    p.add_argument("--mean-doc-len", type=float, default=1300.0)
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=50_000)
    p.add_argument("--rows", type=int, default=200, help="random rows read for the rows/s figure")
    p.add_argument("--dir", default=None, help="work directory (default: a temp dir, removed)")
    p.add_argument("--index-only-docs", type=float, default=0,
                   help="instead: a store of this many documents with offsets only (no token "
                        "bytes), to time index building at scale; rows/s is then not measured")
    p.add_argument("--_rank", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._rank:
        print(json.dumps(measure_rank(args._rank, args.seq_len, args.rows)))
        return 0
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-data-"))
    store = work / "synthetic.zarr"
    try:
        if args.index_only_docs:
            out = write_index_only(store, int(args.index_only_docs), args.mean_doc_len, seed=0)
            args.rows = 0
        else:
            out = write_synthetic(store, int(args.tokens), args.mean_doc_len, args.vocab, seed=0)
        from megatron_diffusion.data.config import DataConfig
        from megatron_diffusion.data.loader import PackedDataset

        t0 = time.perf_counter()
        PackedDataset(DataConfig(blend=[(1.0, str(store))], seq_len=args.seq_len, num_workers=0))
        out["index_build_s"] = time.perf_counter() - t0
        index_dir = work / "synthetic.zarr.index"
        out["index_bytes"] = _dir_bytes(index_dir)
        out["store_bytes"] = _dir_bytes(store)
        rank = subprocess.run([sys.executable, __file__, "--_rank", str(store), "--seq-len",
                               str(args.seq_len), "--rows", str(args.rows)],
                              check=True, capture_output=True, text=True)
        out.update(json.loads(rank.stdout.strip().splitlines()[-1]))
        scale = 1e12 / out["num_tokens"]
        out["extrapolated_1T"] = {
            "num_docs": out["num_docs"] * scale,
            "index_bytes": out["index_bytes"] * scale,
            "index_build_s": out["index_build_s"] * scale,
        }
        if not args.index_only_docs:
            out["extrapolated_1T"]["store_bytes"] = out["store_bytes"] * scale
        out["args"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        print(json.dumps(out, indent=2))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
