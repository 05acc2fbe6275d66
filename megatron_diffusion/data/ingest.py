"""Ingest: tokenize documents in parallel and stream them into a zarr v3 token store.

Store layout (format version 1; see docs/data.md):

* ``tokens``        int32 ``[num_tokens]``: every document's tokens followed by one EOS, all
                    documents concatenated. Chunked (64Ki tokens) inside shards (16Mi tokens) so
                    a random row read decompresses ~256 KB, and a 5 TB corpus is ~80k files.
* ``doc_offsets``   int64 ``[num_docs + 1]``: document ``d`` is ``tokens[off[d]:off[d+1]]``
                    (its trailing EOS included).
* ``prompt_lengths`` int32 ``[num_docs]``: SFT prompt tokens at the start of each document
                    (0 in CPT stores); prompt tokens stay clean and carry no loss (METHOD.md 4).
* ``split``         int8 ``[num_docs]``: 0 train, 1 validation; a document is in validation iff
                    ``uniform(seed, doc_index) < validation_fraction`` (``hashing.uniform``), so
                    the split is reproducible from the attrs alone.
* attrs: format, format_version, store_id (a fresh uuid: keys the loader's index cache), tokenizer hash and special ids, counts, source description.

Documents are read in order (``sources``), tokenized in batches by a process pool (order kept
by ``imap``), and appended through buffers that flush whole shards, so each shard is written
once. Everything goes to a hidden temporary sibling that is renamed at the end: an interrupted
or failed run leaves no store behind.
"""

import multiprocessing as mp
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from megatron_diffusion.data import hashing
from megatron_diffusion.data.sources import SourceSpec, SourceStats, check_inputs, iter_batches
from megatron_diffusion.data.tokenizer import LoadedTokenizer, from_json_string, load_tokenizer
from megatron_diffusion.errors import UsageError, check_choice

FORMAT = "megatron-diffusion-token-store"
FORMAT_VERSION = 1
TOKEN_CHUNK = 1 << 16
TOKEN_SHARD = 1 << 24
INDEX_CHUNK = 1 << 20
SPLITS = {"train": 0, "validation": 1}


@dataclass
class IngestConfig:
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

    def validate(self) -> None:
        if self.sft and (self.prompt_field is None or self.response_field is None):
            raise UsageError("--prompt-field/--response-field: SFT needs both, got only one")
        if not (isinstance(self.validation_fraction, (int, float)) and 0 <= self.validation_fraction < 1):
            raise UsageError(f"--validation-fraction: got {self.validation_fraction!r}, expected 0 <= f < 1")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise UsageError(f"--workers: got {self.workers!r}, expected an integer >= 1")
        check_choice("--on-undecodable", self.on_undecodable, ("skip", "error"))
        if self.token_shard % self.token_chunk:
            raise UsageError(f"token_shard: got {self.token_shard}, expected a multiple of "
                             f"token_chunk={self.token_chunk}")

    def source_spec(self) -> SourceSpec:
        fields = (self.prompt_field, self.response_field) if self.sft else (self.text_field,)
        return SourceSpec(inputs=list(self.inputs), fields=fields, glob=self.glob,
                          on_undecodable=self.on_undecodable, batch_size=self.batch_size)


class _Appender:
    """Append to a 1-D zarr array, writing only whole ``flush_every``-element blocks until close."""

    def __init__(self, array, flush_every: int):
        self.array, self.flush_every = array, flush_every
        self.parts: list[np.ndarray] = []
        self.buffered = 0
        self.written = 0

    def append(self, values: np.ndarray) -> None:
        self.parts.append(values)
        self.buffered += len(values)
        if self.buffered >= self.flush_every:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self.parts:
            return
        data = np.concatenate(self.parts)
        n = len(data) if final else (len(data) // self.flush_every) * self.flush_every
        if n:
            self.array.resize((self.written + n,))
            self.array[self.written:self.written + n] = data[:n]
            self.written += n
        rest = data[n:]
        self.parts, self.buffered = ([rest] if len(rest) else []), len(rest)

    def close(self) -> int:
        self._flush(final=True)
        return self.written


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


def split_codes(doc_indices: np.ndarray, seed: int, validation_fraction: float) -> np.ndarray:
    """int8 split per document: 1 (validation) iff ``uniform(seed, index) < fraction``."""
    return (hashing.uniform(seed, doc_indices) < validation_fraction).astype(np.int8)


def _create_arrays(group, cfg: IngestConfig) -> dict:
    codec = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")

    def make(name, dtype, chunks, shards=None):
        return group.create_array(name, shape=(0,), dtype=dtype, chunks=(chunks,),
                                  shards=(shards,) if shards else None, compressors=codec,
                                  fill_value=0)

    return {
        "tokens": _Appender(make("tokens", "int32", cfg.token_chunk, cfg.token_shard),
                            cfg.token_shard),
        "doc_offsets": _Appender(make("doc_offsets", "int64", INDEX_CHUNK), INDEX_CHUNK),
        "prompt_lengths": _Appender(make("prompt_lengths", "int32", INDEX_CHUNK), INDEX_CHUNK),
        "split": _Appender(make("split", "int8", INDEX_CHUNK), INDEX_CHUNK),
    }


def _write_store(tmp: Path, cfg: IngestConfig, tok: LoadedTokenizer, tokenizer_json: str) -> dict:
    spec = cfg.source_spec()
    stats = SourceStats()
    group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
    out = _create_arrays(group, cfg)
    out["doc_offsets"].append(np.zeros(1, dtype=np.int64))
    num_docs = num_tokens = num_validation = 0
    batches = iter_batches(spec, stats)
    if cfg.workers > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(tokenizer_json,))
        encoded = pool.imap(_encode, batches)
    else:
        pool = None
        _init_worker(tokenizer_json, in_pool=False)
        encoded = map(_encode, batches)
    try:
        bar = tqdm(desc=f"preprocess {Path(cfg.output).name}", unit="doc")
        for tokens, lengths, prompt_lengths in encoded:
            idx = np.arange(num_docs, num_docs + len(lengths))
            splits = split_codes(idx, cfg.seed, cfg.validation_fraction)
            out["tokens"].append(tokens)
            out["doc_offsets"].append(num_tokens + np.cumsum(lengths))
            out["prompt_lengths"].append(prompt_lengths)
            out["split"].append(splits)
            num_docs += len(lengths)
            num_tokens += int(lengths.sum())
            num_validation += int(splits.sum())
            bar.update(len(lengths))
            bar.set_postfix(tokens=num_tokens, refresh=False)
        bar.close()
    finally:
        if pool is not None:
            pool.terminate()
    if num_docs == 0:
        raise UsageError(f"--input: no documents found in {', '.join(cfg.inputs)}"
                         + (f" ({stats.num_undecodable} undecodable skipped)" if stats.num_undecodable else ""))
    for appender in out.values():
        appender.close()
    attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "store_id": uuid.uuid4().hex,
        "tokenizer_hash": tok.hash,
        "tokenizer_path": str(Path(cfg.tokenizer).resolve()),
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "mask_id": tok.mask_id,
        "pad_id": tok.pad_id,
        "num_tokens": num_tokens,
        "num_docs": num_docs,
        "num_validation_docs": num_validation,
        "mode": "sft" if cfg.sft else "cpt",
        "split_seed": cfg.seed,
        "validation_fraction": cfg.validation_fraction,
        "num_undecodable_skipped": stats.num_undecodable,
        "source": {
            "inputs": [str(Path(p).resolve()) for p in cfg.inputs],
            "glob": cfg.glob,
            "fields": list(spec.fields),
        },
    }
    group.attrs.update(attrs)
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        summary = _write_store(tmp, cfg, tok, tokenizer_json)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:  # error or interrupt (KeyboardInterrupt included): never leave a partial store
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
