"""Megatron-LM indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``) as a token source.

Users who preprocessed a corpus for Megatron-LM name the prefix in ``data.blend`` beside zarr
stores. The files are read through megatron-core's own ``IndexedDataset`` (memory-mapped; no
reader of ours). One of our documents is one Megatron document (all its sequences); the
per-document arrays the packing plan needs are computed from the ``.idx`` once into the index
cache, so packing, blending, sharding and resume are the zarr store's code. A document of two
sequences is an SFT sample (prompt, response); the validation split is drawn as ``preprocess``
draws it (``data.indexed_validation_fraction``); ``data.tokenizer`` names the tokenizer the files
do not record. Opening refuses a missing, malformed or mis-sized file in one line, and the
``.bin``'s size is checked again before every read (a file truncated under a running job would
otherwise be a SIGBUS in a loader worker). docs/data.md "Megatron-LM indexed datasets" has the
format, what is checked and what cannot be.
"""

import hashlib
import os
import warnings
from functools import cached_property
from pathlib import Path

import numpy as np

from megatron_diffusion.data.store import DOC_ARRAYS, write_doc_array_npy
from megatron_diffusion.data.tokenizer import LoadedTokenizer
from megatron_diffusion.data.writer import split_codes
from megatron_diffusion.errors import UsageError

SUFFIXES = (".bin", ".idx")
SPLIT_SEED = 1234
"""Seed of the validation split's hash: ``preprocess --seed``'s default."""
NO_SPLIT = -1
"""``split`` code of an empty document: in neither the train nor the validation split."""
EOS_SAMPLE = 16
"""Documents at each end of the dataset whose EOS is checked at open."""
FINGERPRINT_BYTES = 1 << 20
"""Bytes hashed at each end of the ``.idx`` (with both sizes) for the dataset's id."""


def indexed_prefix(path: str) -> str | None:
    """The ``.bin``/``.idx`` prefix a blend entry names (``PREFIX``, ``PREFIX.bin`` or
    ``PREFIX.idx``), or None when it names something else (a zarr store directory)."""
    if os.path.isdir(path):
        return None
    for suffix in SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path if any(os.path.exists(path + s) for s in SUFFIXES) else None


def _open_megatron(prefix: str):
    """megatron-core's ``IndexedDataset``; its asserts and numpy errors become one line."""
    with warnings.catch_warnings():  # megatron.core's import warns of Apex/TE fallbacks that
        warnings.simplefilter("ignore")  # do not concern reading two files
        from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset.__new__(IndexedDataset)
    try:
        dataset.__init__(prefix, mmap=True)
    except (AssertionError, ValueError, OSError, KeyError) as e:
        # a half-built IndexedDataset's __del__ would print an ignored AttributeError
        dataset.__dict__.setdefault("bin_reader", None)
        dataset.__dict__.setdefault("index", None)
        raise UsageError(f"indexed dataset {prefix}: {prefix}.idx is not a readable Megatron "
                         f"index (truncated or another format: {e or type(e).__name__})") from None
    return dataset


class IndexedTokenSource:
    """A Megatron indexed dataset with ``TokenStore``'s read interface (``path`` is the prefix)."""

    def __init__(self, prefix: str | Path, tokenizer: LoadedTokenizer, validation_fraction: float = 0.0):
        self.path = Path(prefix)
        self.tokenizer, self.validation_fraction = tokenizer, validation_fraction
        self.bin_path, self.idx_path = (Path(f"{prefix}{s}") for s in SUFFIXES)
        self._check_files_exist()
        self._dataset = _open_megatron(str(prefix))
        self._index = self._dataset.index
        self.dtype = np.dtype(self._index.dtype)
        self._check_dtype()
        self.num_tokens = self._count_tokens()
        self.bin_bytes = self.num_tokens * self.dtype.itemsize
        self._check_bin_size()
        self.store_id = self._fingerprint()
        self._check_sample_eos()

    # opening ----------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"indexed dataset {self.path}"

    def _check_files_exist(self) -> None:
        for p in (self.idx_path, self.bin_path):
            if not p.is_file():
                raise UsageError(f"{self._where()}: {p} is missing (expected {self.path}.bin and "
                                 f"{self.path}.idx, as Megatron's preprocess_data.py writes them)")
        if self.bin_path.stat().st_size == 0:
            raise UsageError(f"{self._where()}: {self.bin_path} is empty")

    def _check_dtype(self) -> None:
        if self.dtype.kind not in "iu":
            raise UsageError(f"{self._where()}: {self.idx_path} gives token dtype {self.dtype}, "
                             "expected an integer type (token ids)")
        limit = int(np.iinfo(self.dtype).max) + 1
        if self.vocab_size > limit:
            raise UsageError(f"{self._where()}: {self.idx_path} stores tokens as {self.dtype} "
                             f"(ids < {limit}), but data.tokenizer {self.tokenizer.path} has "
                             f"{self.vocab_size} ids: tokenized with a smaller vocabulary")

    def _count_tokens(self) -> int:
        n = self._index.sequence_count
        if n == 0:
            raise UsageError(f"{self._where()}: {self.idx_path} lists no sequences")
        last_end = int(self._index.sequence_pointers[-1]) + int(self._index.sequence_lengths[-1]) \
            * self.dtype.itemsize
        return last_end // self.dtype.itemsize

    def _check_bin_size(self, since_open: bool = False) -> None:
        """The ``.bin`` holds exactly the tokens the ``.idx`` describes (a stat, no read)."""
        size = self.bin_path.stat().st_size if self.bin_path.is_file() else None
        if size == self.bin_bytes:
            return
        found = "missing" if size is None else f"{size} bytes"
        why = "changed since the dataset was opened" if since_open else \
            "truncated, or the .idx of another dtype or dataset"
        raise UsageError(f"{self._where()}: {self.bin_path} is {found}, but {self.idx_path} "
                         f"describes {self.num_tokens} {self.dtype} tokens = {self.bin_bytes} bytes ({why})")

    def _fingerprint(self) -> str:
        """The dataset's id (keys the index cache and the loader's state): both files' sizes,
        the first and last MiB of the ``.idx`` (lengths and document boundaries) and the
        validation fraction, so a copy keeps it and a re-tokenized dataset gets another."""
        h = hashlib.sha256(f"{self.idx_path.stat().st_size} {self.bin_bytes} "
                           f"validation {self.validation_fraction!r}".encode())
        with open(self.idx_path, "rb") as f:
            h.update(f.read(FINGERPRINT_BYTES))
            f.seek(max(0, self.idx_path.stat().st_size - FINGERPRINT_BYTES))
            h.update(f.read(FINGERPRINT_BYTES))
        return h.hexdigest()[:32]

    def _check_sample_eos(self) -> None:
        n = self.num_docs
        docs = np.unique(np.r_[0:min(EOS_SAMPLE, n), max(0, n - EOS_SAMPLE):n])
        starts, ends = self._doc_starts(docs), self._doc_starts(docs + 1)
        nonempty = ends > starts
        last = np.array([self._dataset.get(0, offset=int(e) - 1, length=1)[0] for e in ends[nonempty]])
        self.check_document_ends(docs[nonempty], last)

    # metadata ---------------------------------------------------------------------------------
    num_docs = property(lambda self: len(self._index.document_indices) - 1)
    vocab_size = property(lambda self: self.tokenizer.vocab_size)
    eos_id = property(lambda self: self.tokenizer.eos_id)
    mask_id = property(lambda self: self.tokenizer.mask_id)
    pad_id = property(lambda self: self.tokenizer.pad_id)
    tokenizer_hash = property(lambda self: self.tokenizer.hash)
    tokenizer_file = property(lambda self: self.tokenizer.path)

    @cached_property
    def mode(self) -> str:
        """``sft`` when every document is two sequences (prompt, response), else ``cpt``."""
        di, step = self._index.document_indices, 1 << 24
        for i in range(0, len(di) - 1, step):
            if not (np.diff(di[i:i + step + 1]) == 2).all():
                return "cpt"
        return "sft"

    def check_compatible(self, vocab_size: int | None = None, tokenizer_hash: str | None = None) -> None:
        """UsageError naming this dataset if ``data.tokenizer`` is not the run's tokenizer."""
        tok = f"data.tokenizer {self.tokenizer.path}"
        if vocab_size is not None and vocab_size != self.vocab_size:
            raise UsageError(f"{self._where()}: {tok} has vocab_size {self.vocab_size}, expected "
                             f"{vocab_size} (the run's other data or checkpoint)")
        if tokenizer_hash is not None and tokenizer_hash != self.tokenizer_hash:
            raise UsageError(f"{self._where()}: {tok} has tokenizer_hash {self.tokenizer_hash[:12]}..., "
                             f"expected {tokenizer_hash[:12]}... (the run's other data or checkpoint)")

    def check_document_ends(self, doc_ids: np.ndarray, last_tokens: np.ndarray) -> None:
        """Every document ends with the tokenizer's EOS (Megatron's ``--append-eod``)."""
        bad = np.flatnonzero(np.asarray(last_tokens) != self.eos_id)
        if len(bad):
            d, t = int(doc_ids[bad[0]]), int(last_tokens[bad[0]])
            raise UsageError(f"{self._where()}: document {d} ends with id {t}, not the EOS id "
                             f"{self.eos_id} of data.tokenizer {self.tokenizer.path} (preprocess "
                             "with --append-eod, and with this tokenizer)")

    # data -------------------------------------------------------------------------------------
    def read_tokens(self, start: int, end: int) -> np.ndarray:
        """int32 tokens ``[start, end)``, checked against the vocabulary."""
        return self.read_ranges(np.array([start]), np.array([end]))

    def read_ranges(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Concatenation of several token ranges, through ``IndexedDataset.get``."""
        self._check_bin_size(since_open=True)
        parts = []
        for s, e in zip(starts, ends):
            s, e = int(s), int(e)
            if not 0 <= s <= e <= self.num_tokens:
                raise IndexError(f"{self._where()}: token range [{s}, {e}) outside [0, {self.num_tokens})")
            parts.append(self._dataset.get(0, offset=s, length=e - s))
        tokens = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, dtype=np.int32)
        self._check_ids(tokens, int(starts[0]) if len(starts) else 0)
        return tokens

    def _check_ids(self, tokens: np.ndarray, start: int) -> None:
        if not tokens.size:
            return
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.vocab_size:
            raise UsageError(f"{self._where()}: tokens from {start} hold ids outside [0, "
                             f"{self.vocab_size}) of data.tokenizer {self.tokenizer.path} (min {lo}, "
                             f"max {hi}): tokenized with another tokenizer, or corrupt")
        if (tokens == self.mask_id).any():
            raise UsageError(f"{self._where()}: tokens from {start} hold the [MASK] id {self.mask_id} "
                             f"of data.tokenizer {self.tokenizer.path}: tokenized with another tokenizer")

    def verify(self, block: int = 1 << 24) -> list[str]:
        """Read everything once (``check-store``): every id inside the vocabulary and not
        [MASK], every non-empty document ending with EOS; the first problem of each block of
        ``block`` tokens or documents, without the dataset's name."""
        from megatron_diffusion.progress import Progress

        self._check_bin_size(since_open=True)
        tokens = self._dataset.get(0, offset=0, length=self.num_tokens)  # the memory map, no copy
        problems = []
        with Progress(self.num_tokens + self.num_docs, f"check-store {self.path}",
                      unit="token/doc") as bar:
            for start in range(0, self.num_tokens, block):
                problems += self._problem(self._check_ids, tokens[start:start + block], start)
                bar.update(min(block, self.num_tokens - start))
            for d in range(0, self.num_docs, block):
                starts = self.read_doc_array("doc_offsets", d, min(d + block, self.num_docs) + 1)
                docs = np.flatnonzero(starts[1:] > starts[:-1])
                problems += self._problem(self.check_document_ends, d + docs, tokens[starts[docs + 1] - 1])
                bar.update(min(block, self.num_docs - d))
        return problems

    def _problem(self, check, *args) -> list[str]:
        try:
            check(*args)
        except UsageError as e:
            return [str(e).removeprefix(f"{self._where()}: ")]
        return []

    def _doc_starts(self, docs: np.ndarray) -> np.ndarray:
        """Token offset where each of ``docs`` starts: the pointer of its first sequence
        ``di[d]`` (``num_tokens`` for ``d = num_docs``, or for empty documents at the end)."""
        seq = np.asarray(self._index.document_indices[docs], dtype=np.int64)
        out = np.full(seq.shape, self.num_tokens, dtype=np.int64)
        inside = seq < self._index.sequence_count
        out[inside] = np.asarray(self._index.sequence_pointers[seq[inside]]) // self.dtype.itemsize
        return out

    def read_doc_array(self, name: str, start: int = 0, end: int | None = None) -> np.ndarray:
        """``[start:end]`` of one per-document array (``DOC_ARRAYS``), computed from the ``.idx``."""
        if name not in DOC_ARRAYS:
            raise ValueError(f"{name!r} is not one of {DOC_ARRAYS}")
        length = self.num_docs + (name == "doc_offsets")
        end = length if end is None else min(end, length)
        if name == "doc_offsets":
            return self._doc_starts(np.arange(start, end))
        if name == "split":
            empty = np.diff(self._doc_starts(np.arange(start, end + 1))) == 0
            codes = split_codes(np.arange(start, end), SPLIT_SEED, self.validation_fraction)
            return np.where(empty, NO_SPLIT, codes).astype(np.int8)
        if self.mode != "sft":  # prompt_lengths
            return np.zeros(end - start, dtype=np.int32)
        first_seq = np.asarray(self._index.document_indices[start:end])
        return np.asarray(self._index.sequence_lengths[first_seq], dtype=np.int32)

    def cached_doc_array(self, name: str, cache_dir: Path) -> np.ndarray:
        """``name`` in ``DOC_ARRAYS`` as a read-only memmap, computed once chunk by chunk."""
        if name not in DOC_ARRAYS:
            raise ValueError(f"{name!r} is not one of {DOC_ARRAYS}")
        sample = self.read_doc_array(name, 0, 0)
        length = self.num_docs + (name == "doc_offsets")
        return write_doc_array_npy(Path(cache_dir) / f"{name}.npy", sample.dtype, length,
                                   lambda i, j: self.read_doc_array(name, i, j))

    def __repr__(self) -> str:
        return f"IndexedTokenSource({str(self.path)!r}, docs={self.num_docs}, tokens={self.num_tokens})"
