"""Read-only access to a token store (layout in ``writer``'s docstring).

Nothing here loads a whole array: token ranges are read through zarr, which decompresses only
the chunks a range touches. The per-document arrays (``doc_offsets``, ``prompt_lengths``,
``split``) are copied once, chunk by chunk, into ``.npy`` files in the index cache directory and
memory-mapped from there (``cached_doc_array``), the equivalent of Megatron's ``.idx`` file:
a rank touches only the pages of the documents it reads.
"""

from pathlib import Path

import numpy as np
import zarr

from megatron_diffusion.data import checksums
from megatron_diffusion.data.writer import FORMAT, FORMAT_VERSION
from megatron_diffusion.errors import UsageError
from megatron_diffusion.fileio import atomic_path

DOC_ARRAYS = ("doc_offsets", "prompt_lengths", "split")
_ATTRS = ("store_id", "tokenizer_hash", "vocab_size", "eos_id", "mask_id", "pad_id", "num_tokens", "num_docs")


_CHECKED_STORES: set = set()
"""(store path, checksums.json mtime) whose chunk files this process found whole."""


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temp file then rename, so concurrent builders/readers never see a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def write_doc_array_npy(path: Path, dtype, length: int, read, step: int = 1 << 20) -> np.ndarray:
    """A per-document array as a read-only memmap of ``path``, written once (atomically) from
    ``read(i, j)`` slices of ``step`` documents: no rank holds the whole array in memory."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(length,))
            for i in range(0, length, step):
                out[i:i + step] = read(i, min(i + step, length))
            out.flush()
            del out
    return np.load(path, mmap_mode="r")


class TokenStore:
    """A token store opened read-only. ``path`` names it in every error message."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UsageError(f"store {self.path}: no such directory (create it with `megatron-diffusion "
                             "preprocess`; a Megatron dataset is named by its .bin/.idx prefix)")
        try:
            self._group = zarr.open_group(store=str(self.path), mode="r", zarr_format=3)
        except Exception as e:  # zarr raises GroupNotFoundError / JSON errors
            raise UsageError(f"store {self.path}: not a zarr v3 group ({e})") from None
        self.attrs = dict(self._group.attrs)
        if self.attrs.get("format") != FORMAT:
            raise UsageError(f"store {self.path}: attrs format is {self.attrs.get('format')!r}, expected {FORMAT!r}")
        if self.attrs.get("format_version") != FORMAT_VERSION:
            raise UsageError(f"store {self.path}: format_version is {self.attrs.get('format_version')!r}, "
                             f"expected {FORMAT_VERSION} (re-run preprocess)")
        missing = [k for k in _ATTRS if k not in self.attrs]
        missing += [a for a in ("tokens",) + DOC_ARRAYS if a not in self._group]
        if missing:
            raise UsageError(f"store {self.path}: incomplete, missing {', '.join(missing)}")
        self._tokens = self._group["tokens"]
        self._check_chunk_files()
        try:
            self._manifest = checksums.read_manifest(self.path)
        except ValueError as e:
            raise UsageError(f"store {self.path}: {e}") from None
        self._verified: set[str] = set()
        """Chunk files whose CRC-32 this process checked (each once, at its first read)."""

    def _check_chunk_files(self) -> None:
        """Every chunk file ``checksums.json`` lists is there whole (a stat each, no reads).

        Once per store and process (~1 s for the ~61k shard files of 1T tokens, measured on
        the 2-core test machine): the trainer and each evaluation reopen the same stores."""
        manifest_file = self.path / checksums.MANIFEST
        try:
            key = (str(self.path.resolve()), manifest_file.stat().st_mtime_ns)
        except FileNotFoundError:  # a store from before checksums: nothing to check against
            return
        if key in _CHECKED_STORES:
            return
        try:
            manifest = checksums.read_manifest(self.path)
        except ValueError as e:
            raise UsageError(f"store {self.path}: {e}") from None
        problems = checksums.missing_or_truncated(self.path, manifest)
        if problems:
            more = f" (and {len(problems) - 1} more; run check-store)" if len(problems) > 1 else ""
            raise UsageError(f"store {self.path}: {problems[0]}{more}")
        _CHECKED_STORES.add(key)

    # metadata ---------------------------------------------------------------------------------
    num_docs = property(lambda self: int(self.attrs["num_docs"]))
    num_tokens = property(lambda self: int(self.attrs["num_tokens"]))
    vocab_size = property(lambda self: int(self.attrs["vocab_size"]))
    eos_id = property(lambda self: int(self.attrs["eos_id"]))
    mask_id = property(lambda self: int(self.attrs["mask_id"]))
    pad_id = property(lambda self: int(self.attrs["pad_id"]))
    tokenizer_hash = property(lambda self: str(self.attrs["tokenizer_hash"]))
    store_id = property(lambda self: str(self.attrs["store_id"]))
    mode = property(lambda self: str(self.attrs.get("mode", "cpt")))

    @property
    def tokenizer_file(self) -> str | None:
        """The tokenizer.json ``preprocess`` copied into the store (None in older stores)."""
        p = self.path / "tokenizer.json"
        return str(p) if p.is_file() else None

    def check_compatible(self, vocab_size: int | None = None, tokenizer_hash: str | None = None) -> None:
        """UsageError naming this store and the field if it was tokenized differently."""
        if vocab_size is not None and vocab_size != self.vocab_size:
            raise UsageError(f"store {self.path}: vocab_size is {self.vocab_size}, expected {vocab_size} "
                             "(re-run preprocess with the run's tokenizer)")
        if tokenizer_hash is not None and tokenizer_hash != self.tokenizer_hash:
            raise UsageError(f"store {self.path}: tokenizer_hash is {self.tokenizer_hash[:12]}..., "
                             f"expected {tokenizer_hash[:12]}... (re-run preprocess with the run's tokenizer)")

    def check_document_ends(self, doc_ids: np.ndarray, last_tokens: np.ndarray) -> None:
        """Every document ends with EOS (``preprocess`` appends it); anything else is corruption."""
        bad = np.flatnonzero(np.asarray(last_tokens) != self.eos_id)
        if len(bad):
            raise UsageError(f"store {self.path}: document {int(doc_ids[bad[0]])} ends with id "
                             f"{int(last_tokens[bad[0]])}, not EOS {self.eos_id} (corrupt; run check-store)")

    # data -------------------------------------------------------------------------------------
    # Decoded chunks are kept in a small per-process LRU (``CHUNK_CACHE`` chunks, 256 KiB each
    # for 64Ki int32 tokens): a row touches one to a few chunks, neighbouring rows often the same
    # ones, and each zarr call costs a sync->async hop plus a decode (~6 ms per row without the
    # cache, measured with tools/bench_loader.py). Memory per worker stays bounded.
    CHUNK_CACHE = 64

    def _chunk_file(self, c: int) -> str:
        """The file (relative to the store) holding token chunk ``c`` (its shard's)."""
        cs = self._tokens.chunks[0]
        return f"tokens/c/{c * cs // self._tokens.shards[0] if self._tokens.shards else c}"

    def _verify_chunk_file(self, rel: str) -> None:
        """Before a decode: the file is there with the manifest's size (a stat, every read: a
        file deleted after the store was opened would read as zeros) and, at its first read in
        this process, its CRC-32."""
        entry = (self._manifest or {}).get("files", {}).get(rel)
        if entry is None:
            return  # a store from before checksums, or a chunk zarr never wrote (fill value)
        size, crc = entry
        problem = checksums.missing_or_truncated(self.path, {"files": {rel: entry}})
        if problem:
            raise UsageError(f"store {self.path}: {problem[0]} (changed since the store was "
                             "opened; run check-store)")
        if rel not in self._verified:
            if checksums.crc32_file(self.path / rel) != crc:
                raise UsageError(f"store {self.path}: chunk file {rel} fails its checksum "
                                 "(corrupted); run check-store")
            self._verified.add(rel)

    def _decode_chunk(self, c: int) -> np.ndarray:
        """Token chunk ``c``, verified (file and checksum, ids inside the vocabulary)."""
        cs, rel = self._tokens.chunks[0], self._chunk_file(c)
        self._verify_chunk_file(rel)
        try:
            arr = np.asarray(self._tokens[c * cs:min((c + 1) * cs, self.num_tokens)], dtype=np.int32)
        except Exception as e:  # a corrupt shard: crc32c/blosc errors from zarr's codecs
            raise UsageError(f"store {self.path}: token chunk {c} (file {rel}) "
                             f"is unreadable ({type(e).__name__}: {e}); run check-store") from None
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.vocab_size):
            raise UsageError(f"store {self.path}: token chunk {c} (file {rel}) holds ids outside "
                             f"[0, {self.vocab_size}) (min {int(arr.min())}, max {int(arr.max())}): "
                             "corrupt, or written with another tokenizer")
        return arr

    def _chunk(self, c: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_chunk_cache", {})
        arr = cache.pop(c, None)
        if arr is None:
            arr = self._decode_chunk(c)
            if len(cache) >= self.CHUNK_CACHE:
                cache.pop(next(iter(cache)))
        cache[c] = arr  # most recently used last
        return arr

    def read_tokens(self, start: int, end: int) -> np.ndarray:
        """int32 tokens ``[start, end)``; only the chunks covering the range are decompressed."""
        if not 0 <= start <= end <= self.num_tokens:
            raise IndexError(f"store {self.path}: token range [{start}, {end}) outside [0, {self.num_tokens})")
        cs = self._tokens.chunks[0]
        first, last = start // cs, (end - 1) // cs if end > start else start // cs
        parts = [self._chunk(c) for c in range(first, last + 1)] if end > start else []
        if not parts:
            return np.zeros(0, dtype=np.int32)
        joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return joined[start - first * cs:end - first * cs].copy()

    def read_ranges(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Concatenation of several token ranges (through the chunk cache)."""
        parts = [self.read_tokens(int(s), int(e)) for s, e in zip(starts, ends)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def read_doc_array(self, name: str, start: int = 0, end: int | None = None) -> np.ndarray:
        """A slice of one per-document array straight from zarr (for index building)."""
        return np.asarray(self._group[name][start:end])

    def cached_doc_array(self, name: str, cache_dir: Path) -> np.ndarray:
        """``name`` in ``DOC_ARRAYS`` as a read-only memmap, copied once chunk by chunk."""
        if name not in DOC_ARRAYS:
            raise ValueError(f"{name!r} is not one of {DOC_ARRAYS}")
        src = self._group[name]
        return write_doc_array_npy(Path(cache_dir) / f"{name}.npy", src.dtype, src.shape[0],
                                   lambda i, j: src[i:j], step=src.chunks[0])

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, docs={self.num_docs}, tokens={self.num_tokens})"
