"""``megatron-diffusion distill-trajectories``: search and store reveal orders (docs/distillation.md).

For each of the first ``--rows`` packed rows of ``--data`` (the tokens stay the data's), every
block after the first ``--context-blocks`` gets candidate reveal orders from ``--checkpoint``
(``distill.search``); the best by ELBO is stored as a step map (``distill.store``).
Under torchrun every rank takes the rows ``i % WORLD_SIZE == RANK`` and writes its own store in
``--out``; a re-run with the same settings resumes at the rows not yet done. Bad input is one
line and exit 2 before anything is written.
"""

import argparse
import dataclasses
import os
import time
from pathlib import Path

import torch

from megatron_diffusion.errors import UsageError, check_int
from megatron_diffusion.fileio import output_errors
from megatron_diffusion.progress import track


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="block-diffusion checkpoint or run dir")
    parser.add_argument("--data", required=True, help="token store (zarr) made with its tokenizer")
    parser.add_argument("--out", required=True, help="directory of the per-rank trajectory stores")
    parser.add_argument("--rows", type=int, default=64, help="data rows to search (the first N)")
    parser.add_argument("--candidates", type=int, default=6,
                        help="Gumbel-sampled orders per block, besides the 3 greedy ones and left to right")
    parser.add_argument("--temperatures", default="0.5,1.0", help="Gumbel temperatures to cycle over")
    parser.add_argument("--tokens-per-step", type=int, default=1, help="positions revealed per step")
    parser.add_argument("--context-blocks", type=int, default=1,
                        help="leading blocks of a row that are context, not searched")
    parser.add_argument("--exact", action="store_true",
                        help="also the exact best order (dynamic programming, block size <= 6, "
                             "one token per step), stored when found")
    parser.add_argument("--split", default="train", choices=("train", "validation"))
    parser.add_argument("--seed", type=int, default=0)


def _settings(args, checkpoint: Path, temperatures) -> dict:
    return {"checkpoint": str(checkpoint.resolve()), "data": str(Path(args.data).resolve()),
            "rows": args.rows, "candidates": args.candidates, "temperatures": list(temperatures),
            "tokens_per_step": args.tokens_per_step, "context_blocks": args.context_blocks,
            "exact": args.exact, "split": args.split, "seed": args.seed}


def _temperatures(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise UsageError(f"--temperatures: got {text!r}, expected comma-separated numbers") from None
    if any(t <= 0 for t in values):
        raise UsageError(f"--temperatures: got {text!r}, expected numbers > 0")
    return values


def _check_args(args) -> None:
    """What needs no checkpoint: checked before the model loads."""
    check_int("--rows", args.rows, lo=1)
    check_int("--candidates", args.candidates, lo=0)
    check_int("--tokens-per-step", args.tokens_per_step, lo=1)
    check_int("--context-blocks", args.context_blocks, lo=1)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} exists and is not a directory")


def _check_block(args, block_size: int) -> None:
    if args.exact and (block_size > 6 or args.tokens_per_step != 1):
        raise UsageError(f"--exact: needs block size <= 6 and --tokens-per-step 1, got block size "
                         f"{block_size} and {args.tokens_per_step}")
    if args.tokens_per_step > block_size:
        raise UsageError(f"--tokens-per-step: {args.tokens_per_step} is more than the block size "
                         f"{block_size}")


def _rows(loaded, args, world: int, rank: int):
    """``(index, tokens_L, document_ids_L)`` of this rank's rows among the first ``--rows``."""
    from megatron_diffusion.data.loader import DiffusionDataLoader

    # the rows of --data, not the trajectories a distilled teacher may have trained on
    cfg = dataclasses.replace(loaded.config.data, blend=[(1.0, args.data)], micro_batch_size=1,
                              global_batch_size=1, num_workers=0, mode="cpt", split=args.split,
                              trajectories=None)
    # the store must be the checkpoint's tokenizer's (checked by the loader as it opens it)
    loader = DiffusionDataLoader(cfg, tokenizer_hash=loaded.meta.get("tokenizer_hash"))
    for i, rows in zip(range(args.rows), loader):
        if i % world == rank:
            yield i, rows.tokens_BL[0], rows.document_ids_BL[0]


def run(args) -> int:
    from megatron_diffusion.loading.trained import load_model
    from megatron_diffusion.distill import search
    from megatron_diffusion.distill.row_model import RowModel
    from megatron_diffusion.distill.store import TrajectoryStore, shard_path
    from megatron_diffusion.training.checkpoint import resolve_checkpoint

    temperatures = _temperatures(args.temperatures)
    _check_args(args)
    checkpoint = resolve_checkpoint(args.checkpoint)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    loaded = load_model(checkpoint)
    row_model = RowModel(loaded)
    seq_len, B = loaded.config.data.seq_len, row_model.block_size
    _check_block(args, B)
    row_model.check(seq_len, args.context_blocks)
    candidates = search.candidate_set(args.candidates, temperatures)
    rows = list(_rows(loaded, args, world, rank))  # the data is checked before --out is made
    with output_errors(args.out):  # a read-only or full disk: one line naming --out
        Path(args.out).mkdir(parents=True, exist_ok=True)
    store = TrajectoryStore.open(shard_path(Path(args.out), rank, world), rows=args.rows,
                                 seq_len=seq_len, blocks=seq_len // B - args.context_blocks,
                                 settings=_settings(args, checkpoint, temperatures),
                                 candidates=search.labels(candidates, args.exact))
    todo = set(store.pending([i for i, _, _ in rows]))
    stats = _search_rows([r for r in rows if r[0] in todo], row_model, store, candidates, args)
    _report(stats, store, Path(args.out), rank, world)
    return 0


def _search_rows(rows, row_model, store, candidates, args) -> dict:
    from megatron_diffusion.distill import search

    stats = {"rows": 0, "forwards": 0, "states": 0, "seconds": 0.0}
    for i, tokens_L, document_ids_L in track(rows, "distill", unit="row"):
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + i)
        logp_fn, x0_NB = row_model.logp_fn(tokens_L, document_ids_L, args.context_blocks)
        counted = search.CountingLogProb(logp_fn)
        found = search.search_row(x0_NB, counted, candidates, tokens_per_step=args.tokens_per_step,
                                  exact=args.exact, generator=generator)
        step_map_L = torch.full_like(tokens_L, -1)
        step_map_L[args.context_blocks * row_model.block_size:] = found.step_map_NB.reshape(-1)
        store.write_row(i, tokens=tokens_L, document_ids=document_ids_L, step_map=step_map_L,
                        choice=found.choice_N, elbo_selected=found.elbo_selected,
                        elbo_search=found.elbo_search,
                        elbo_left_to_right=found.elbo_left_to_right, elbo_random=found.elbo_random,
                        elbo_exact=found.elbo_exact)
        stats["rows"] += 1
        stats["forwards"] += counted.calls
        stats["states"] += counted.states
        stats["seconds"] += time.perf_counter() - start
    return stats


def _report(stats: dict, store, out: Path, rank: int, world: int) -> None:
    import numpy as np

    from megatron_diffusion.distill.store import ELBOS

    g = store.group
    done = g["done"][:]
    means = {name: float(np.nanmean(g[name][:][done])) if done.any() else float("nan")
             for name in ELBOS}
    n = max(stats["rows"], 1)
    print(f"distill-trajectories rank {rank}/{world}: {int(done.sum())} rows done in {out} "
          f"({stats['rows']} this run, {stats['forwards'] / n:.1f} forwards and "
          f"{stats['states'] / n:.1f} row states per row, {stats['seconds'] / n:.2f} s per row)")
    print("mean ELBO per block (nats): " + ", ".join(
        f"{k.removeprefix('elbo_')} {v:.3f}" for k, v in means.items() if not np.isnan(v)))
