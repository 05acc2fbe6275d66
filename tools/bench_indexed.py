#!/usr/bin/env python
"""Loader throughput: a Megatron indexed dataset (.bin/.idx) against a zarr store of the same tokens.

    python tools/bench_indexed.py --tokens 20e6 --seq-len 8192 --rows 100 --rounds 6
    python tools/bench_indexed.py --index-only-docs 10e6 --seq-len 8192   # start-up at scale

Writes a synthetic zarr store (``bench_data_index.write_synthetic``: random ids, log-normal
document lengths, EOS last) and the same documents as ``PREFIX.bin``/``.idx`` with megatron-core's
``IndexedDatasetBuilder`` in the dtype Megatron's preprocess_data.py picks
(``DType.optimal_dtype``), plus a word-level tokenizer.json of the same vocabulary for
``data.tokenizer``. Then, for each source: bytes on disk, the first open (packing plan built) and
a second open (cached, what every rank does), and clean packed rows/s through
``DiffusionDataLoader`` (``--workers``, random rows: the plan shuffles them). The rows/s rounds
alternate between the two sources (which goes first alternates too), so a shared machine's load
falls on both alike; the ratio is of the medians, and per round. Prints one JSON object.

``--index-only-docs N`` instead writes an ``.idx`` of N documents (log-normal lengths) beside a
sparse ``.bin`` of the right size (zeros: EOS in the synthetic tokenizer, no disk blocks) and
times what a rank's start-up costs at scale: the first open (per-document arrays and packing
plan built from the ``.idx``) and a cached open, extrapolated to 1T tokens by documents.
"""

import argparse
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_data_index import _dir_bytes, write_synthetic


def write_tokenizer(path: Path, vocab: int) -> Path:
    """A word-level tokenizer.json whose ids 0/1/2 are EOS/[MASK]/pad (write_synthetic's)."""
    from tokenizers import Tokenizer, models

    from megatron_diffusion.data.tokenizer import SPECIAL_TOKENS

    words = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    words.update({f"w{i}": i for i in range(len(SPECIAL_TOKENS), vocab)})
    tok = Tokenizer(models.WordLevel(words, unk_token="w3"))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.save(str(path))
    return path


def write_indexed_twin(store_path: Path, prefix: Path) -> float:
    """The store's documents as one sequence each (EOS last, as --append-eod); returns seconds."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    from megatron_diffusion.data.store import TokenStore

    t0 = time.perf_counter()
    store = TokenStore(store_path)
    off = store.read_doc_array("doc_offsets")
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(store.vocab_size))
    for d in range(store.num_docs):
        tokens = store.read_tokens(int(off[d]), int(off[d + 1]))
        builder.add_document(tokens, [len(tokens)])
    builder.finalize(f"{prefix}.idx")
    return time.perf_counter() - t0


def write_index_only(prefix: Path, num_docs: int, mean_doc_len: float, vocab: int) -> dict:
    """An .idx through megatron-core's ``_IndexWriter`` (pointers by cumsum: its Python loop
    would take minutes) and a sparse .bin of the size the .idx describes."""
    from megatron.core.datasets.indexed_dataset import DType, _IndexWriter

    dtype = DType.optimal_dtype(vocab)
    lengths = np.maximum(2, np.random.default_rng(0).lognormal(np.log(mean_doc_len) - 0.5, 1.0, num_docs))
    lengths = lengths.astype(np.int32)
    with _IndexWriter(f"{prefix}.idx", dtype) as writer:
        itemsize = np.dtype(dtype).itemsize
        writer._sequence_pointers = lambda lens: np.concatenate([[0], np.cumsum(lens, dtype=np.int64)[:-1]]) * itemsize
        writer.write(lengths, None, np.arange(num_docs + 1, dtype=np.int64))
    num_tokens = int(lengths.sum(dtype=np.int64))
    with open(f"{prefix}.bin", "wb") as f:
        f.truncate(num_tokens * itemsize)
    return {"num_docs": num_docs, "num_tokens": num_tokens, "idx_bytes": Path(f"{prefix}.idx").stat().st_size}


def startup_at_scale(args, work: Path) -> dict:
    from megatron_diffusion.data.config import DataConfig

    prefix = work / "scale_text_document"
    out = write_index_only(prefix, int(args.index_only_docs), args.mean_doc_len, args.vocab)
    cfg = DataConfig(blend=[(1.0, str(prefix))], tokenizer=str(write_tokenizer(work / "tok.json", args.vocab)),
                     seq_len=args.seq_len, num_workers=0)
    open_seconds(cfg)  # loads the tokenizer once (not what scales)
    shutil.rmtree(work / "scale_text_document.index")
    out["open_first_s"] = open_seconds(cfg)
    out["open_cached_s"] = open_seconds(cfg)
    out["index_cache_bytes"] = _dir_bytes(work / "scale_text_document.index")
    scale = 1e12 / out["num_tokens"]
    out["extrapolated_1T"] = {k: out[k] * scale for k in ("num_docs", "idx_bytes", "index_cache_bytes", "open_first_s")}
    return out


def open_seconds(cfg) -> float:
    from megatron_diffusion.data.loader import PackedDataset

    t0 = time.perf_counter()
    PackedDataset(cfg)
    return time.perf_counter() - t0


def rows_per_s(cfg, rows: int, start: int) -> float:
    """Clean rows/s of ``rows`` micro-batches of one row from global sample ``start`` on."""
    from megatron_diffusion.data.loader import DiffusionDataLoader

    loader = DiffusionDataLoader(cfg)
    loader.consumed_samples = start
    it = iter(loader)
    next(it)  # worker start-up, not reading
    t0 = time.perf_counter()
    for _ in range(rows):
        next(it)
    dt = time.perf_counter() - t0
    del it
    return rows / dt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=float, default=20e6)
    p.add_argument("--mean-doc-len", type=float, default=1300.0)
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=50_000, help="< 65,500: uint16 .bin, as Megatron writes it")
    p.add_argument("--rows", type=int, default=100, help="rows per round and source")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--workers", type=int, default=0, help="data.num_workers (0: in this process)")
    p.add_argument("--dir", default=None, help="work directory (default: a temp dir, removed)")
    p.add_argument("--index-only-docs", type=float, default=0,
                   help="instead: start-up on an .idx of this many documents (sparse .bin)")
    args = p.parse_args()
    if args.index_only_docs:
        work = Path(args.dir or tempfile.mkdtemp(prefix="bench-indexed-"))
        try:
            print(json.dumps({**startup_at_scale(args, work), "args": vars(args)}, indent=2))
        finally:
            if not args.dir:
                shutil.rmtree(work, ignore_errors=True)
        return 0

    from megatron_diffusion.data.config import DataConfig

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-indexed-"))
    try:
        zarr_path, prefix = work / "synthetic.zarr", work / "synthetic_text_document"
        out = {"zarr_write": write_synthetic(zarr_path, int(args.tokens), args.mean_doc_len, args.vocab, seed=0)}
        out["indexed_write_s"] = write_indexed_twin(zarr_path, prefix)
        tokenizer = write_tokenizer(work / "tokenizer.json", args.vocab)
        common = dict(seq_len=args.seq_len, micro_batch_size=1, global_batch_size=1,
                      num_workers=args.workers, seed=1)
        cfgs = {"zarr": DataConfig(blend=[(1.0, str(zarr_path))], **common),
                "indexed": DataConfig(blend=[(1.0, str(prefix))], tokenizer=str(tokenizer), **common)}
        out["bytes"] = {"zarr": _dir_bytes(zarr_path),
                        "indexed": sum(Path(f"{prefix}{s}").stat().st_size for s in (".bin", ".idx"))}
        out["open_first_s"] = {k: open_seconds(c) for k, c in cfgs.items()}
        out["open_cached_s"] = {k: open_seconds(c) for k, c in cfgs.items()}
        rates = {k: [] for k in cfgs}
        for r, start in zip(range(args.rounds), itertools.count(0, args.rows)):
            for k in (("zarr", "indexed") if r % 2 == 0 else ("indexed", "zarr")):
                rates[k].append(rows_per_s(cfgs[k], args.rows, start))  # the same rows for both
        med = {k: statistics.median(v) for k, v in rates.items()}
        out["rows_per_s"] = {k: [round(x, 1) for x in v] for k, v in rates.items()}
        out["rows_per_s_median"] = {k: round(v, 1) for k, v in med.items()}
        out["tokens_per_s_median"] = {k: round(v * args.seq_len) for k, v in med.items()}
        out["indexed_over_zarr"] = {
            "median": round(med["indexed"] / med["zarr"], 2),
            "per_round": [round(i / z, 2) for i, z in zip(rates["indexed"], rates["zarr"])]}
        out["args"] = vars(args)
        print(json.dumps(out, indent=2))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    np.seterr(all="raise")
    sys.exit(main())
