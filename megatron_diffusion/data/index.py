"""Packing plans and blend indices: numpy arrays built once, cached on disk, memory-mapped.

Packing (docs/method.md 4): for one store, split and store epoch, ``docs.npy`` is a shuffled order
of the split's documents, ``cum.npy`` their cumulative effective lengths (with the extra SFT EOS)
and ``rows.npy`` a shuffled order of the rows. The documents laid end to end form one token
stream and row ``r`` is its slice ``[rows[r] L, (rows[r] + 1) L)``; a row's documents are found by
binary search in ``cum``. Blending (``BlendIndex``, Megatron's ``BlendedDataset``): a blended
epoch has ``floor(min_i R_i / w_i)`` rows, interleaved by each store's ideal time so every prefix
is within one row of the weights; a store's rows continue across blended epochs. A "store" is a
zarr ``TokenStore`` or a Megatron ``.bin``/``.idx`` dataset (``indexed.IndexedTokenSource``).
Files are written to a temp name and renamed (ranks may race), beside the store or, where this
user cannot write, in the per-user cache, keyed by the store's id. docs/data.md "Index cache" has
the layout, the sizes and the cache's location.
"""

import errno
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_diffusion.data import hashing
from megatron_diffusion.data.writer import SPLITS
from megatron_diffusion.data.store import TokenStore, save_npy_atomic
from megatron_diffusion.errors import UsageError
from megatron_diffusion.fileio import write_text_atomic


@dataclass(frozen=True)
class PlanKey:
    """Everything a packing plan depends on besides the store and the epoch."""

    seed: int
    seq_len: int
    split: str
    mode: str
    sft_min_eos: int = 1
    sft_max_eos: int = 1

    @property
    def dirname(self) -> str:
        eos = f"-eos{self.sft_min_eos}to{self.sft_max_eos}" if self.mode == "sft" else ""
        return f"seed{self.seed}-L{self.seq_len}-{self.split}-{self.mode}{eos}"


UNWRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
"""Why an index beside a store cannot be written (a read-only mount, another user's directory)."""

_ANNOUNCED: set[str] = set()
"""Stores whose fallback index directory this process has already named on stderr."""


def cache_root(store: TokenStore, index_cache_dir: str | None) -> Path:
    """``<store>.index/<store_id>/`` (or under ``index_cache_dir``): a re-ingested store gets a
    new id. Falls back to ``user_cache_root`` when the store's directory is not writable."""
    if index_cache_dir:
        return Path(index_cache_dir) / store.store_id
    beside = store.path.parent / f"{store.path.name}.index" / store.store_id
    reason = _unwritable(beside)
    if reason is None:
        return beside
    root = user_cache_root(store)
    if str(store.path) not in _ANNOUNCED and os.environ.get("RANK", "0") == "0":
        print(f"warning: store {store.path}: cannot write its index beside it ({beside.parent}: "
              f"{reason}); using {root.parent} (set data.index_cache_dir to choose)",
              file=sys.stderr, flush=True)
    _ANNOUNCED.add(str(store.path))
    return root


def user_cache_root(store: TokenStore) -> Path:
    """The per-user index directory of ``store``: keyed by its absolute path (two stores of one
    name do not share it) and its id."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec's rule
    where = hashlib.sha256(str(store.path.resolve()).encode()).hexdigest()[:16]
    return base / "megatron-diffusion" / "index" / f"{store.path.name}-{where}" / store.store_id


def _unwritable(directory: Path) -> str | None:
    """Why files cannot be created in ``directory`` (made if missing), or None if they can."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError as e:
        if e.errno in UNWRITABLE_ERRNOS:
            return e.strerror
        raise
    return None


def extra_eos(key: PlanKey, epoch: int, doc_ids: np.ndarray) -> np.ndarray:
    """EOS tokens appended after each document beyond the stored one (0 in CPT mode)."""
    if key.mode != "sft":
        return np.zeros(len(doc_ids), dtype=np.int64)
    return hashing.randint(key.sft_min_eos, key.sft_max_eos, key.seed, epoch, doc_ids) - 1


def _write_meta(path: Path, meta: dict) -> None:
    write_text_atomic(path, json.dumps(meta))


def _doc_lengths(offsets: np.ndarray, step: int = 1 << 24) -> np.ndarray:
    """Stored length of every document (int32: 4 B/doc), computed chunk-wise from the offsets."""
    lengths = np.empty(len(offsets) - 1, dtype=np.int32)
    for i in range(0, len(lengths), step):
        lengths[i:i + step] = np.diff(offsets[i:i + step + 1])
    return lengths


def plan_dir(root: Path, key: PlanKey, epoch: int) -> Path:
    return root / key.dirname / f"epoch{epoch}"


def build_plan(store: TokenStore, key: PlanKey, epoch: int, root: Path) -> None:
    """Write ``docs/cum/rows.npy`` and ``meta.json`` (written last: its presence marks completion)."""
    directory = plan_dir(root, key, epoch)
    offsets = store.cached_doc_array("doc_offsets", root)
    split = store.cached_doc_array("split", root)
    docs = np.flatnonzero(np.asarray(split) == SPLITS[key.split])
    if len(docs) == 0:
        raise UsageError(f"store {store.path}: no documents in split {key.split!r}")
    if store.num_docs < 2**31:
        docs = docs.astype(np.int32)
    rng = np.random.default_rng([key.seed, epoch])
    rng.shuffle(docs)
    lengths = _doc_lengths(offsets)[docs]
    if key.mode == "sft":
        lengths += extra_eos(key, epoch, docs).astype(np.int32)
    cum = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cum[1:])
    num_rows = int(cum[-1] // key.seq_len)
    if num_rows == 0:
        raise UsageError(f"store {store.path}: split {key.split!r} has {int(cum[-1])} tokens, "
                         f"fewer than one row of seq_len={key.seq_len}")
    rows = rng.permutation(num_rows)
    save_npy_atomic(directory / "docs.npy", docs)
    save_npy_atomic(directory / "cum.npy", cum)
    save_npy_atomic(directory / "rows.npy", rows)
    _write_meta(directory / "meta.json", {"num_rows": num_rows, "num_docs": len(docs),
                                          "num_tokens": int(cum[-1]), "key": key.dirname})


@dataclass
class Row:
    """One packed row: ``L`` tokens, per-token document index within the row, prompt flags."""

    tokens_L: np.ndarray
    document_ids_L: np.ndarray
    prompt_mask_L: np.ndarray


class StorePlan:
    """The memory-mapped plan of one store epoch."""

    def __init__(self, store: TokenStore, key: PlanKey, epoch: int, root: Path):
        self.store, self.key, self.epoch = store, key, epoch
        directory = plan_dir(root, key, epoch)
        if not (directory / "meta.json").exists():
            build_plan(store, key, epoch, root)
        self.meta = json.loads((directory / "meta.json").read_text())
        self.num_rows = int(self.meta["num_rows"])
        self.docs = np.load(directory / "docs.npy", mmap_mode="r")
        self.cum = np.load(directory / "cum.npy", mmap_mode="r")
        self.rows = np.load(directory / "rows.npy", mmap_mode="r")
        self.offsets = store.cached_doc_array("doc_offsets", root)
        self.prompt_lengths = store.cached_doc_array("prompt_lengths", root) if key.mode == "sft" else None

    def row(self, r: int) -> Row:
        L = self.key.seq_len
        start = int(self.rows[r]) * L
        end = start + L
        p0 = int(np.searchsorted(self.cum, start, side="right")) - 1
        p1 = int(np.searchsorted(self.cum, end, side="left"))
        pos = np.arange(p0, p1)
        doc_ids = np.asarray(self.docs[p0:p1], dtype=np.int64)
        doc_start = np.asarray(self.cum[p0:p1])                    # stream position of each doc
        lo = np.maximum(start - doc_start, 0)                       # in-document range of the row
        hi = np.minimum(end - doc_start, np.asarray(self.cum[p0 + 1:p1 + 1]) - doc_start)
        base_lo = np.asarray(self.offsets[doc_ids])
        stored_len = np.asarray(self.offsets[doc_ids + 1]) - base_lo
        real_hi = np.minimum(hi, stored_len)                        # beyond it: extra SFT EOS
        real_lo = np.minimum(lo, real_hi)
        real = self.store.read_ranges(base_lo + real_lo, base_lo + real_hi)
        tokens = np.full(L, self.store.eos_id, dtype=np.int32)
        seg_len = hi - lo
        seg_start = np.concatenate([[0], np.cumsum(seg_len)[:-1]])
        real_len = real_hi - real_lo
        within = np.arange(real_len.sum()) - np.repeat(np.cumsum(real_len) - real_len, real_len)
        tokens[np.repeat(seg_start, real_len) + within] = real
        ends_here = (real_hi == stored_len) & (real_len > 0)  # documents whose last token is here
        if ends_here.any():
            last = (seg_start + real_hi - lo - 1)[ends_here]
            self.store.check_document_ends(doc_ids[ends_here], tokens[last])
        document_ids = np.repeat(np.arange(len(pos)), seg_len)
        if self.prompt_lengths is not None:
            offset_in_doc = np.arange(L) - np.repeat(seg_start - lo, seg_len)
            prompt_mask = offset_in_doc < np.repeat(np.asarray(self.prompt_lengths[doc_ids]), seg_len)
        else:
            prompt_mask = np.zeros(L, dtype=bool)
        return Row(tokens, document_ids, prompt_mask)


class StoreSamples:
    """Rows of one store over successive store epochs: sample ``j`` -> (epoch, row)."""

    def __init__(self, store: TokenStore, key: PlanKey, root: Path):
        self.store, self.key, self.root = store, key, root
        self._plans: dict[int, StorePlan] = {}

    def plan(self, epoch: int) -> StorePlan:
        if epoch not in self._plans:
            self._plans[epoch] = StorePlan(self.store, self.key, epoch, self.root)
        return self._plans[epoch]

    def row(self, j: int) -> Row:
        epoch = 0
        while j >= self.plan(epoch).num_rows:  # SFT epochs differ slightly in rows (EOS counts)
            j -= self.plan(epoch).num_rows
            epoch += 1
        return self.plan(epoch).row(j)


class BlendIndex:
    """Blended epoch of ``N`` rows: position ``k`` -> (store index, that store's row number)."""

    def __init__(self, rows_per_store: list[int], weights: list[float], directory: Path | None):
        self.num_stores = len(weights)
        w = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.size = max(1, int(np.floor(min(np.asarray(rows_per_store) / w))))
        exact = w * self.size
        counts = np.floor(exact).astype(np.int64)
        order = np.argsort(-(exact - counts), kind="stable")       # largest remainders first
        counts[order[: self.size - counts.sum()]] += 1
        self.counts = counts
        if self.num_stores == 1:
            self.dataset_index = self.dataset_sample_index = None  # identity: nothing to store
            return
        meta_path = directory / "meta.json"
        if not meta_path.exists():
            times = np.concatenate([(np.arange(c) + 0.5) / c for c in counts])
            order = np.argsort(times, kind="stable")
            ds = np.repeat(np.arange(self.num_stores, dtype=np.int16), counts)[order]
            within = np.concatenate([np.arange(c) for c in counts])[order]
            save_npy_atomic(directory / "dataset_index.npy", ds)
            save_npy_atomic(directory / "dataset_sample_index.npy", within)
            _write_meta(meta_path, {"size": self.size, "counts": counts.tolist()})
        self.dataset_index = np.load(directory / "dataset_index.npy", mmap_mode="r")
        self.dataset_sample_index = np.load(directory / "dataset_sample_index.npy", mmap_mode="r")

    def locate(self, g: int) -> tuple[int, int]:
        """Global sample ``g`` (over all blended epochs) -> (store, row number in that store)."""
        epoch, k = divmod(g, self.size)
        if self.dataset_index is None:
            return 0, epoch * self.size + k
        i = int(self.dataset_index[k])
        return i, epoch * int(self.counts[i]) + int(self.dataset_sample_index[k])
