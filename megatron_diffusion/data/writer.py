"""``StoreWriter``: append tokenized documents to a new zarr v3 token store.

Store layout (format version 1; docs/data.md has the full description):

* ``tokens``         int32 ``[num_tokens]``: every document's tokens followed by one EOS, all
                     documents concatenated. Chunked (64Ki tokens) inside shards (16Mi tokens):
                     a random row read decompresses ~256 KB, and 5 TB of tokens is ~80k files.
* ``doc_offsets``    int64 ``[num_docs + 1]``: document ``d`` is ``tokens[off[d]:off[d+1]]``
                     (its trailing EOS included).
* ``prompt_lengths`` int32 ``[num_docs]``: SFT prompt tokens at the start of each document
                     (0 in CPT stores); prompt tokens stay clean and carry no loss (docs/method.md 4).
* ``split``          int8 ``[num_docs]``: 0 train, 1 validation; a document is in validation iff
                     ``hashing.uniform(seed, doc_index) < validation_fraction``, so the split is
                     reproducible from the attrs alone.
* attrs: format, format_version, store_id (a fresh uuid that keys the loader's index cache),
  tokenizer hash and special ids, counts, mode, source description.
* ``checksums.json``: size and CRC-32 of every chunk file (``checksums``), written last.

Writes go through buffers that flush whole shards (whole chunks for the per-document arrays),
so every shard file is written exactly once: zarr rewrites a whole shard on a partial write.
"""

import uuid
from pathlib import Path

import numpy as np
import zarr

from megatron_diffusion.data import checksums, hashing

FORMAT = "megatron-diffusion-token-store"
FORMAT_VERSION = 1
TOKEN_CHUNK = 1 << 16
TOKEN_SHARD = 1 << 24
INDEX_CHUNK = 1 << 20
SPLITS = {"train": 0, "validation": 1}


def split_codes(doc_indices: np.ndarray, seed: int, validation_fraction: float) -> np.ndarray:
    """int8 split per document: 1 (validation) iff ``uniform(seed, index) < fraction``."""
    return (hashing.uniform(seed, doc_indices) < validation_fraction).astype(np.int8)


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


class StoreWriter:
    """Write a store at ``path`` (callers write to a temp path and rename it when done)."""

    def __init__(self, path: str | Path, *, split_seed: int, validation_fraction: float,
                 token_chunk: int = TOKEN_CHUNK, token_shard: int = TOKEN_SHARD):
        self.split_seed, self.validation_fraction = split_seed, validation_fraction
        self.path = Path(path)
        self.group = zarr.open_group(store=str(path), mode="w", zarr_format=3)
        codec = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")

        def make(name, dtype, chunks, shards=None):
            return self.group.create_array(name, shape=(0,), dtype=dtype, chunks=(chunks,),
                                           shards=(shards,) if shards else None,
                                           compressors=codec, fill_value=0)

        self.arrays = {
            "tokens": _Appender(make("tokens", "int32", token_chunk, token_shard), token_shard),
            "doc_offsets": _Appender(make("doc_offsets", "int64", INDEX_CHUNK), INDEX_CHUNK),
            "prompt_lengths": _Appender(make("prompt_lengths", "int32", INDEX_CHUNK), INDEX_CHUNK),
            "split": _Appender(make("split", "int8", INDEX_CHUNK), INDEX_CHUNK),
        }
        self.arrays["doc_offsets"].append(np.zeros(1, dtype=np.int64))
        self.num_docs = self.num_tokens = self.num_validation = 0

    def append(self, tokens: np.ndarray, lengths: np.ndarray, prompt_lengths: np.ndarray) -> None:
        """Documents given as concatenated int32 tokens (EOS included) and their lengths."""
        splits = split_codes(np.arange(self.num_docs, self.num_docs + len(lengths)),
                             self.split_seed, self.validation_fraction)
        self.arrays["tokens"].append(np.asarray(tokens, dtype=np.int32))
        self.arrays["doc_offsets"].append(self.num_tokens + np.cumsum(lengths, dtype=np.int64))
        self.arrays["prompt_lengths"].append(np.asarray(prompt_lengths, dtype=np.int32))
        self.arrays["split"].append(splits)
        self.num_docs += len(lengths)
        self.num_tokens += int(np.sum(lengths))
        self.num_validation += int(splits.sum())

    def close(self, attrs: dict) -> dict:
        """Flush and write the attrs (given ones plus format, id, counts); returns all attrs."""
        for appender in self.arrays.values():
            appender.close()
        full = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "store_id": uuid.uuid4().hex,
            **attrs,
            "num_tokens": self.num_tokens,
            "num_docs": self.num_docs,
            "num_validation_docs": self.num_validation,
            "split_seed": self.split_seed,
            "validation_fraction": self.validation_fraction,
        }
        self.group.attrs.update(full)
        checksums.write_manifest(self.path)
        return full
