"""Ingest: tokenize documents in parallel and stream them into a zarr v3 token store.

Documents are read in order (``sources``), tokenized in batches by a process pool (order kept
by ``imap``; one EOS appended to every document) and appended with ``writer.StoreWriter``, whose
docstring describes the store layout. Everything goes to a hidden temporary sibling that is
renamed at the end (``fileio.atomic_dir``): an interrupted or failed run leaves no store behind,
and a full or read-only disk is one line naming the output.
"""

import multiprocessing as mp
import os
from dataclasses import dataclass
from typing import Self
from pathlib import Path

import numpy as np

from megatron_diffusion.data.sources import SourceSpec, SourceStats, check_inputs, iter_batches
from megatron_diffusion.data.tokenizer import LoadedTokenizer, from_json_string, load_tokenizer
from megatron_diffusion.data.writer import TOKEN_CHUNK, TOKEN_SHARD, StoreWriter
from megatron_diffusion.errors import UsageError, check_choice, check_int, check_range
from megatron_diffusion.fileio import atomic_dir
from megatron_diffusion.progress import Progress


@dataclass
class IngestConfig:
    """One ``preprocess`` run: the inputs, the tokenizer, the output store and how records are
    read."""

    inputs: list[str]
    """jsonl/jsonl.gz/parquet files, saved HF dataset directories or source-file trees."""
    output: str
    """Path of the store to create (conventionally ``NAME.zarr``)."""
    tokenizer: str
    """tokenizer.json with EOS and [MASK] (see ``train-tokenizer``)."""
    text_field: str = "text"
    """Record field holding a CPT document."""
    prompt_field: str | None = None
    """SFT: record field of the prompt (clean, no loss). Needs ``response_field``."""
    response_field: str | None = None
    """SFT: record field of the response."""
    validation_fraction: float = 0.01
    """Fraction of documents held out, in [0, 1)."""
    workers: int = 1
    """Tokenizer processes (1 tokenizes in this process)."""
    on_undecodable: str = "skip"
    """``skip`` (count and report) or ``error`` for non-UTF-8 files/lines."""
    glob: str = "*"
    """File name pattern inside source directories."""
    seed: int = 1234
    """Seed of the train/validation split."""
    overwrite: bool = False
    """Replace an existing store at ``output``."""
    batch_size: int = 256
    """Documents per tokenizer task."""
    token_chunk: int = TOKEN_CHUNK
    """Tokens per zarr chunk (the unit a random read decompresses)."""
    token_shard: int = TOKEN_SHARD
    """Tokens per zarr shard file (a multiple of ``token_chunk``)."""

    @property
    def sft(self) -> bool:
        return self.prompt_field is not None or self.response_field is not None

    def validate(self) -> Self:
        if self.sft and (self.prompt_field is None or self.response_field is None):
            raise UsageError("--prompt-field/--response-field: SFT needs both, got only one")
        check_range("--validation-fraction", self.validation_fraction, 0, 1, hi_open=True)
        check_int("--workers", self.workers, lo=1)
        check_choice("--on-undecodable", self.on_undecodable, ("skip", "error"))
        if self.token_shard % self.token_chunk:
            raise UsageError(f"token_shard: got {self.token_shard}, expected a multiple of "
                             f"token_chunk={self.token_chunk}")
        return self

    def source_spec(self) -> SourceSpec:
        fields = (self.prompt_field, self.response_field) if self.sft else (self.text_field,)
        return SourceSpec(inputs=list(self.inputs), fields=fields, glob=self.glob,
                          on_undecodable=self.on_undecodable, batch_size=self.batch_size)


# --- tokenizer worker (module-level so a process pool can pickle it) -------------------------
_WORKER_TOK: LoadedTokenizer | None = None


def _init_worker(tokenizer_json: str, in_pool: bool = True) -> None:
    global _WORKER_TOK
    if in_pool:  # one thread per process: the pool parallelises
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOK = from_json_string(tokenizer_json)


def _encode(batch: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Records -> (concatenated tokens with one EOS per doc, doc lengths, prompt lengths)."""
    tok = _WORKER_TOK
    columns = list(zip(*batch))
    encoded = [tok.tokenizer.encode_batch(list(col), add_special_tokens=False) for col in columns]
    pieces, lengths, prompt_lengths = [], [], []
    eos = np.array([tok.eos_id], dtype=np.int32)
    for i in range(len(batch)):
        parts = [np.asarray(enc[i].ids, dtype=np.int32) for enc in encoded]
        pieces.extend(parts)
        pieces.append(eos)
        lengths.append(sum(len(p) for p in parts) + 1)
        prompt_lengths.append(len(parts[0]) if len(parts) == 2 else 0)
    return (np.concatenate(pieces), np.asarray(lengths, dtype=np.int64),
            np.asarray(prompt_lengths, dtype=np.int32))


def _write_store(tmp: Path, cfg: IngestConfig, tok: LoadedTokenizer, tokenizer_json: str) -> dict:
    spec = cfg.source_spec()
    stats = SourceStats()
    writer = StoreWriter(tmp, split_seed=cfg.seed, validation_fraction=cfg.validation_fraction,
                         token_chunk=cfg.token_chunk, token_shard=cfg.token_shard)
    batches = iter_batches(spec, stats)
    if cfg.workers > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(tokenizer_json,))
        encoded = pool.imap(_encode, batches)
    else:
        pool = None
        _init_worker(tokenizer_json, in_pool=False)
        encoded = map(_encode, batches)
    bar = Progress(None, f"preprocess {Path(cfg.output).name}", unit="doc")
    try:
        for tokens, lengths, prompt_lengths in encoded:
            writer.append(tokens, lengths, prompt_lengths)
            bar.update(len(lengths))
            bar.set_postfix(tokens=writer.num_tokens)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    if writer.num_docs == 0:
        skipped = f" ({stats.num_undecodable} undecodable skipped)" if stats.num_undecodable else ""
        raise UsageError(f"--input: no documents found in {', '.join(cfg.inputs)}{skipped}")
    attrs = writer.close({
        "tokenizer_hash": tok.hash,
        "tokenizer_path": str(Path(cfg.tokenizer).resolve()),
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "mask_id": tok.mask_id,
        "pad_id": tok.pad_id,
        "mode": "sft" if cfg.sft else "cpt",
        "num_undecodable_skipped": stats.num_undecodable,
        "source": {
            "inputs": [str(Path(p).resolve()) for p in cfg.inputs],
            "glob": cfg.glob,
            "fields": list(spec.fields),
        },
    })
    return {**attrs, "undecodable_examples": stats.undecodable_examples}


def preprocess(cfg: IngestConfig) -> dict:
    """Build the store at ``cfg.output``; returns its attrs (plus a few skipped-file examples)."""
    cfg.validate()
    check_inputs(cfg.source_spec())
    tok = load_tokenizer(cfg.tokenizer)
    tokenizer_json = Path(cfg.tokenizer).read_text(encoding="utf-8")
    out = Path(cfg.output)
    if out.exists() and not cfg.overwrite:
        raise UsageError(f"--output: {out} exists (pass --overwrite to replace it)")
    # error, interrupt or a full disk: never a partial store (a full disk is one line)
    with atomic_dir(out) as tmp:
        summary = _write_store(tmp, cfg, tok, tokenizer_json)
        # a store carries its tokenizer: training and checkpoints find it without extra flags
        (tmp / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    return summary
