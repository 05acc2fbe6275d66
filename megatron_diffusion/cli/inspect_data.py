"""``megatron-diffusion inspect-data --config CFG --num-batches N --out FILE.jsonl [--step S]``.

Runs the training config's loader and corruption (no model) and writes one JSON object per
sample, so anyone can recompute the corruption statistics: clean tokens, model-input tokens,
the positions carrying loss and their weights, the corruption level(s) ``t`` (one per block in
block mode), the block size, the stage (``mask``/``edit``) and the number of edit operations.
``--step`` sets the training step the samples are drawn at (warmup and the curriculum depend on
it); the loader starts at the first sample of that step.
"""

import json
import math
from pathlib import Path

from megatron_diffusion.config import load_config
from megatron_diffusion.corruption.factory import make_corruptor
from megatron_diffusion.data.loader import DiffusionDataLoader
from megatron_diffusion.data.vocab import resolve_vocab, store_vocabulary
from megatron_diffusion.distill.store import trajectory_rows
from megatron_diffusion.errors import UsageError
from megatron_diffusion.fileio import atomic_path


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="training YAML config")
    p.add_argument("--num-batches", type=int, default=1, help="micro-batches to write")
    p.add_argument("--out", required=True, help="output .jsonl")
    p.add_argument("--step", type=int, default=0, help="training step the samples belong to")
    p.add_argument("--data-parallel-rank", type=int, default=0)
    p.add_argument("--data-parallel-size", type=int, default=1)
    p.add_argument("overrides", nargs="*", metavar="SECTION.FIELD=VALUE")


def sample_records(batch, block_size: int | None):
    L = batch.seq_len
    for i in range(batch.batch_size):
        w = batch.loss_weights_BL[i]
        pos = (w > 0).nonzero().flatten()
        t = [None if math.isnan(x) else x for x in batch.t_BN[i].tolist()]
        while t and t[-1] is None:  # unused block slots
            t.pop()
        yield {
            "clean_tokens": batch.labels_BL[i].tolist(),
            "input_tokens": batch.tokens_BS[i].tolist(),
            "noisy_tokens": batch.tokens_BS[i, :L].tolist(),
            "document_ids": batch.document_ids_BL[i].tolist(),
            "loss_positions": pos.tolist(),
            "loss_weights": w[pos].tolist(),
            "eligible_positions": int(batch.loss_mask_BL[i].sum()),
            "t": t,
            "block_size": block_size,
            "stage": batch.stage,
            "num_edits": int(batch.num_edits_B[i]),
        }


def run(args) -> int:
    if args.num_batches < 1:
        raise UsageError(f"--num-batches: got {args.num_batches}, expected >= 1")
    if args.step < 0:
        raise UsageError(f"--step: got {args.step}, expected >= 0")
    cfg = load_config(args.config, args.overrides, validate=False)
    stores = resolve_vocab(cfg)
    cfg.validate()
    if args.step >= cfg.training.train_iters:
        raise UsageError(f"--step: {args.step} is past training.train_iters={cfg.training.train_iters}")
    corruptor = make_corruptor(cfg, **store_vocabulary(stores[0]))
    loader = DiffusionDataLoader(cfg.data, data_parallel_rank=args.data_parallel_rank,
                                 data_parallel_size=args.data_parallel_size,
                                 corrupt_fn=corruptor.corrupt,
                                 tokenizer_hash=stores[0].tokenizer_hash,
                                 vocab_size=stores[0].vocab_size,
                                 trajectory_rows=trajectory_rows(cfg.data))
    loader.consumed_samples = args.step * cfg.data.global_batch_size
    block = cfg.attention.block_size if cfg.attention.mode == "block" else None
    out = Path(args.out)
    with atomic_path(out) as tmp, tmp.open("w") as f:
        for n, batch in zip(range(args.num_batches), loader):
            for rec in sample_records(batch, block):
                f.write(json.dumps(rec) + "\n")
    print(f"wrote {out}: {args.num_batches} micro-batches of {cfg.data.micro_batch_size} at step {args.step}")
    return 0
