"""The resumable data-parallel loader: blended packed rows, corrupted in the worker processes.

Sample numbering follows Megatron's ``MegatronPretrainingSampler``: micro-batch ``m`` of DP rank
``r`` holds global samples ``g = m * mbs * dp + r * mbs + [0, mbs)``, so shards are disjoint and
the step of a sample is ``g // global_batch_size`` with no communication. The state is one global
``consumed_samples`` counter (and the blend it refers to). Each row is built and corrupted in a
worker with a ``torch.Generator`` seeded from ``(seed, epoch, g)``, so the stream is the same for
any ``num_workers`` and after a resume. The corruption callable is
``corruption.corruptor``'s ``corrupt``::

    corrupt_fn(tokens_BL, document_ids_BL, *, step, generator, prompt_mask_BL=None) -> DiffusionBatch

called with ``B = 1`` per sample (and ``step_map_BL=`` for trajectory rows); without one the
loader yields ``PackedRows``. With ``data.trajectories`` the rows are a distilled trajectory
store's, which the caller opens and passes as ``trajectory_rows``
(``distill.store.trajectory_rows(cfg)``: the format lives with its writer in ``distill/``, a
later level than ``data``). Workers ignore the preemption signals, and a worker that dies is
reported at the next micro-batch as ``LoaderWorkerDied``, never mid-step (docs/reliability.md).
docs/data.md "The loader" has the rest. Shape suffixes: ``B`` rows, ``L`` = ``seq_len``.
"""

import atexit
import contextlib
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Protocol
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.data import hashing
from megatron_diffusion.data.config import DataConfig
from megatron_diffusion.data.index import BlendIndex, PlanKey, StoreSamples, cache_root
from megatron_diffusion.data.indexed import IndexedTokenSource, indexed_prefix
from megatron_diffusion.data.store import TokenStore
from megatron_diffusion.data.tokenizer import LoadedTokenizer, load_tokenizer
from megatron_diffusion.errors import UsageError

CorruptFn = Callable[..., DiffusionBatch]


class TrajectoryRowSource(Protocol):
    """Rows with a reveal order (``distill.store.TrajectoryRows``); picklable for the workers."""

    def __len__(self) -> int: ...

    def row(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(tokens_L, document_ids_L, step_map_L)`` of row ``j``."""


@dataclass
class PackedRows:
    """Clean packed rows (what the loader yields without a ``corrupt_fn``)."""

    tokens_BL: torch.Tensor
    """int64 tokens, documents separated by EOS."""
    document_ids_BL: torch.Tensor
    """int64 document index within the row (0, 1, ...; non-decreasing)."""
    prompt_mask_BL: torch.Tensor
    """bool: True on SFT prompt tokens (clean, no loss); all False in CPT mode."""
    sample_index_B: torch.Tensor
    """int64 global sample index of each row."""
    step_B: torch.Tensor
    """int64 optimizer step each row belongs to (``sample_index // global_batch_size``)."""

    @staticmethod
    def collate(items: list["PackedRows"]) -> "PackedRows":
        return PackedRows(**{f.name: torch.cat([getattr(it, f.name) for it in items])
                             for f in fields(PackedRows)})


def _plan_key(cfg: DataConfig) -> PlanKey:
    eos = (cfg.sft_min_eos, cfg.sft_max_eos) if cfg.mode == "sft" else (1, 1)
    return PlanKey(cfg.seed, cfg.seq_len, cfg.split, cfg.mode, *eos)


def open_source(path: str, tokenizer: LoadedTokenizer | None,
                validation_fraction: float = 0.0) -> TokenStore | IndexedTokenSource:
    """A blend entry: a zarr store, or a Megatron indexed dataset read with ``tokenizer``
    (``validation_fraction`` of its documents held out)."""
    prefix = indexed_prefix(path)
    if prefix is None:
        return TokenStore(path)
    if tokenizer is None:
        raise UsageError(f"data.tokenizer: blend entry {path} is a Megatron indexed dataset, "
                         "whose files record no tokenizer; set data.tokenizer to the "
                         "tokenizer.json it was made with")
    return IndexedTokenSource(prefix, tokenizer, validation_fraction)


_DATA_TOKENIZERS: dict = {}
"""``data.tokenizer`` by (file, mtime): loaded once per process (every open_stores asks)."""


def data_tokenizer(cfg: DataConfig) -> LoadedTokenizer | None:
    """``data.tokenizer`` loaded, or None when the config names none."""
    if cfg.tokenizer is None:
        return None
    p = Path(cfg.tokenizer)
    if not p.is_file():
        raise UsageError(f"data.tokenizer: {p} is not a file (expected a tokenizer.json)")
    key = (str(p.resolve()), p.stat().st_mtime_ns)
    if key not in _DATA_TOKENIZERS:
        try:
            _DATA_TOKENIZERS[key] = load_tokenizer(p)
        except UsageError as e:
            raise UsageError(f"data.tokenizer: {e}") from None
    return _DATA_TOKENIZERS[key]


def open_stores(cfg: DataConfig, tokenizer_hash: str | None = None,
                vocab_size: int | None = None) -> list[TokenStore | IndexedTokenSource]:
    """Open and cross-check the blend's stores (same tokenizer; SFT stores for SFT mode)."""
    if not cfg.blend:  # an empty config, or no data section
        raise UsageError("data.blend: expected at least one (weight, store path) pair, e.g. "
                         "data.blend='[[1.0, corpus.zarr]]'")
    tokenizer = data_tokenizer(cfg)
    stores = [open_source(p, tokenizer, cfg.indexed_validation_fraction) for p in cfg.paths]
    tokenizer_hash = tokenizer_hash or (tokenizer and tokenizer.hash) or stores[0].tokenizer_hash
    for s in stores:
        s.check_compatible(vocab_size=vocab_size, tokenizer_hash=tokenizer_hash)
        if cfg.mode == "sft" and s.mode != "sft":
            hint = ("whose documents are two sequences, prompt and response" if
                    isinstance(s, IndexedTokenSource) else "made with --prompt-field/--response-field")
            raise UsageError(f"store {s.path}: mode is {s.mode!r}, data.mode 'sft' needs a store "
                             + hint)
    return stores


class PackedDataset(Dataset):
    """Map-style dataset over global sample indices (unbounded: epochs repeat)."""

    def __init__(self, cfg: DataConfig, corrupt_fn: CorruptFn | None = None,
                 tokenizer_hash: str | None = None, vocab_size: int | None = None,
                 trajectory_rows: TrajectoryRowSource | None = None):
        cfg.validate()
        self.cfg, self.corrupt_fn, self.trajectories = cfg, corrupt_fn, trajectory_rows
        self._expect = (tokenizer_hash, vocab_size)
        self._roots = None
        self._open()

    def _open(self) -> None:
        cfg = self.cfg
        self.stores = open_stores(cfg, *self._expect)
        if self._roots is None:  # chosen once (a fallback is said once): workers get the choice
            self._roots = [cache_root(s, cfg.index_cache_dir) for s in self.stores]
        key = _plan_key(cfg)
        self.samples = [StoreSamples(s, key, root) for s, root in zip(self.stores, self._roots)]
        blend_dir = None
        if len(self.stores) > 1:  # keyed by every store id, its weight and the plan key
            tag = hashing.seed_from(*[int(s.store_id[:15], 16) for s in self.stores],
                                    *[int(w * 1e9) for w in cfg.weights])
            blend_dir = self._roots[0] / key.dirname / f"blend-{tag:016x}"
        self.blend = BlendIndex([ss.plan(0).num_rows for ss in self.samples], cfg.weights, blend_dir)
        self.eos_id = self.stores[0].eos_id
        self._order = (-1, None)

    # spawn-started workers get the config and reopen (memmaps are not pickled as copies)
    def __getstate__(self):
        return {"cfg": self.cfg, "corrupt_fn": self.corrupt_fn, "_expect": self._expect,
                "_roots": self._roots, "trajectories": self.trajectories}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    @property
    def samples_per_epoch(self) -> int:
        """Rows in one blended epoch (or one pass over the trajectory rows)."""
        return self.blend.size if self.trajectories is None else len(self.trajectories)

    def epoch_of(self, g: int) -> int:
        return g // self.samples_per_epoch

    def _trajectory_row(self, g: int):
        """Row ``g`` of the trajectory rows, shuffled per epoch."""
        epoch, n = self.epoch_of(g), len(self.trajectories)
        if self._order[0] != epoch:
            rng = np.random.default_rng(hashing.seed_from(self.cfg.seed, epoch, n))
            self._order = (epoch, rng.permutation(n))
        return self.trajectories.row(int(self._order[1][g % n]))

    def __getitem__(self, g: int):
        tokens_BL, document_ids_BL, prompt_mask_BL, extra = self._row(g)
        step = g // self.cfg.global_batch_size
        if self.corrupt_fn is None:
            return PackedRows(tokens_BL, document_ids_BL, prompt_mask_BL,
                              torch.tensor([g]), torch.tensor([step]))
        generator = torch.Generator().manual_seed(hashing.seed_from(self.cfg.seed, self.epoch_of(g), g))
        return self.corrupt_fn(tokens_BL, document_ids_BL, step=step, generator=generator, **extra)

    def _row(self, g: int):
        """Row ``g`` as ``[1, L]`` tensors, and what else ``corrupt_fn`` gets: the SFT prompt
        mask, or a trajectory row's reveal order."""
        def tensor(a, dtype="int64"):
            return torch.from_numpy(a.astype(dtype))[None]

        if self.trajectories is not None:
            tokens_L, document_ids_L, step_map_L = self._trajectory_row(g)
            tokens_BL = tensor(tokens_L)
            return (tokens_BL, tensor(document_ids_L), torch.zeros_like(tokens_BL, dtype=torch.bool),
                    {"step_map_BL": tensor(step_map_L)})
        store_i, j = self.blend.locate(g)
        row = self.samples[store_i].row(j)
        prompt_mask_BL = tensor(row.prompt_mask_L, bool)
        return (tensor(row.tokens_L), tensor(row.document_ids_L), prompt_mask_BL,
                {"prompt_mask_BL": prompt_mask_BL if self.cfg.mode == "sft" else None})


def build_indices(cfg: DataConfig, num_samples: int, tokenizer_hash: str | None = None,
                  vocab_size: int | None = None) -> int:
    """Build every index global samples ``[0, num_samples)`` need; returns the blended epochs.

    Call it on one rank (or offline) before a barrier: otherwise the plan of a later store
    epoch is built lazily by whichever worker first needs it (correct, files are renamed into
    place, but each racing worker redoes the work).
    """
    ds = PackedDataset(cfg, None, tokenizer_hash, vocab_size)
    num_epochs = -(-num_samples // ds.blend.size)
    for samples, rows_needed in zip(ds.samples, ds.blend.counts * num_epochs):
        epoch, rows = 0, 0
        while rows < rows_needed:
            rows += samples.plan(epoch).num_rows
            epoch += 1
    return num_epochs


class _MicroBatchSampler:
    """Global sample indices of this rank's micro-batches, from ``consumed_samples`` on, forever."""

    def __init__(self, consumed_samples: int, micro_batch_size: int, rank: int, size: int):
        self.consumed, self.mbs, self.rank, self.size = consumed_samples, micro_batch_size, rank, size

    def __iter__(self) -> Iterator[list[int]]:
        per_step = self.mbs * self.size
        m = self.consumed // per_step
        while True:
            first = m * per_step + self.rank * self.mbs
            yield list(range(first, first + self.mbs))
            m += 1


WORKER_IGNORED_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class LoaderWorkerDied(UsageError):
    """A loader worker process died (killed by a signal, or exited): which, how, the likely cause.
    One line, exit 2 in the CLI; the trainer saves its last completed step first."""


# why a worker dies of a signal, and what to change; {n} is data.num_workers
_LIKELY_CAUSE = {
    signal.SIGKILL: "most likely by the out-of-memory killer: lower data.num_workers (now {n}) or "
                    "give the job more memory",
    signal.SIGBUS: "most likely out of shared memory (/dev/shm): lower data.num_workers (now {n}) "
                   "or raise the shared-memory limit",
    signal.SIGSEGV: "a crash in native code",
}


def _worker_death(batches, num_workers: int, where: str,
                  wait: float = 0.0) -> LoaderWorkerDied | None:
    """The first dead worker of a torch iterator (``_workers[i]`` is worker ``i``), or None;
    ``wait``: seconds to give a worker still dying (the error its death caused can come first)."""
    end = time.monotonic() + wait
    while True:
        for worker_id, worker in enumerate(batches._workers):
            code = worker.exitcode  # None while it runs; -N: killed by signal N
            if code is None:
                continue
            what = f"data loader worker {worker_id}{where} (pid {worker.pid})"
            if code >= 0:
                return LoaderWorkerDied(f"{what} exited with status {code}")
            sig = signal.Signals(-code)
            cause = _LIKELY_CAUSE.get(sig, "").format(n=num_workers)
            return LoaderWorkerDied(f"{what} was killed by {sig.name} (signal {-code})"
                                    + (f", {cause}" if cause else ""))
        if time.monotonic() >= end:
            return None
        time.sleep(0.05)


def _defer_worker_deaths() -> None:
    """Wrap torch's SIGCHLD handler (installed by the first iterator with workers) so that it does
    not raise a worker's death wherever the main thread is; the loader reports it instead."""
    torch_handler = signal.getsignal(signal.SIGCHLD)
    if not callable(torch_handler) or getattr(torch_handler, "defers_worker_deaths", False) \
            or threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        try:
            torch_handler(signum, frame)
        except RuntimeError as e:
            if not str(e).startswith("DataLoader worker"):
                raise

    handler.defers_worker_deaths = True
    signal.signal(signal.SIGCHLD, handler)


def _worker_message(text: str) -> str:
    """A worker's UsageError as its one line (torch re-raises it with the traceback in front,
    whose last line names the class by its qualified name: ``megatron_diffusion.errors.UsageError:``)."""
    last = text.strip().splitlines()[-1] if text.strip() else text
    for prefix in (f"{UsageError.__module__}.{UsageError.__qualname__}: ", f"{UsageError.__name__}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last


def _ignore_preemption_signals(worker_id: int) -> None:
    """``worker_init_fn``: ignore the preemption signals, then unblock them (pending ones drop)."""
    for sig in WORKER_IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_IGNORED_SIGNALS)


_LIVE_WORKER_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()


def _stop_workers(batches) -> None:
    """Stop one iterator's workers: torch's stop message and join, then SIGKILL what is left.

    The message cannot get through when the iterator is freed by the garbage collector (its
    queues' feeder threads are finalised first), and torch's fallback, SIGTERM, is ignored by our
    workers; a worker reads the store and writes only by renaming files into place, so killing it
    loses nothing.
    """
    batches._shutdown_workers()
    for worker in batches._workers:
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


def _shut_down_live_workers() -> None:
    """At exit, stop the workers of iterators still alive (held by a trainer, a reference cycle).

    multiprocessing's own exit hook terminates daemonic children with SIGTERM and joins them:
    workers that ignore SIGTERM would keep the interpreter from ever exiting. This hook is
    registered after multiprocessing's (atexit runs the last registered first).
    """
    for batches in list(_LIVE_WORKER_ITERATORS):
        _stop_workers(batches)


atexit.register(_shut_down_live_workers)


@contextlib.contextmanager
def _preemption_signals_blocked():
    """Hold the preemption signals while workers fork; the parent gets a pending one after."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_IGNORED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class DiffusionDataLoader:
    """Iterate micro-batches for one DP rank; ``state_dict``/``load_state_dict`` resume exactly."""

    def __init__(self, cfg: DataConfig, *, data_parallel_rank: int = 0, data_parallel_size: int = 1,
                 corrupt_fn: CorruptFn | None = None, tokenizer_hash: str | None = None,
                 vocab_size: int | None = None,
                 trajectory_rows: TrajectoryRowSource | None = None):
        cfg.validate()
        cfg.check_data_parallel(data_parallel_size)
        if (cfg.trajectories is None) != (trajectory_rows is None):
            raise ValueError(f"trajectory_rows: {'none' if trajectory_rows is None else 'given'} "
                             f"with data.trajectories={cfg.trajectories!r}; expected "
                             "distill.store.trajectory_rows(cfg), None without data.trajectories")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise UsageError(f"data_parallel_rank: got {data_parallel_rank}, expected 0..{data_parallel_size - 1}")
        self.cfg, self.rank, self.size = cfg, data_parallel_rank, data_parallel_size
        self.dataset = PackedDataset(cfg, corrupt_fn, tokenizer_hash, vocab_size, trajectory_rows)
        self.collate = PackedRows.collate if corrupt_fn is None else DiffusionBatch.collate
        self.consumed_samples = 0

    @property
    def samples_per_epoch(self) -> int:
        return self.dataset.samples_per_epoch

    @property
    def epoch(self) -> int:
        return self.consumed_samples // self.dataset.samples_per_epoch

    def __iter__(self):
        cfg = self.cfg
        sampler = _MicroBatchSampler(self.consumed_samples, cfg.micro_batch_size, self.rank, self.size)
        loader = DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=self.collate,
            prefetch_factor=cfg.prefetch_factor if cfg.num_workers > 0 else None,
            worker_init_fn=_ignore_preemption_signals if cfg.num_workers > 0 else None,
        )
        with _preemption_signals_blocked():
            batches = iter(loader)  # starts the workers
        if cfg.num_workers > 0:
            _LIVE_WORKER_ITERATORS.add(batches)
            _defer_worker_deaths()
        where = f" of data-parallel rank {self.rank}" if self.size > 1 else ""
        try:
            for batch in batches:
                self.consumed_samples += cfg.micro_batch_size * self.size
                yield batch
                if cfg.num_workers > 0:  # before asking: a dead worker's micro-batch never comes
                    died = _worker_death(batches, cfg.num_workers, where)
                    if died is not None:
                        raise died
        except LoaderWorkerDied:
            raise
        except UsageError as e:  # from a worker, wrapped by torch with the worker's traceback
            raise UsageError(_worker_message(str(e))) from None
        except Exception:  # torch's "exited unexpectedly", a reset connection to a dying worker
            if cfg.num_workers == 0:
                raise
            died = _worker_death(batches, cfg.num_workers, where, wait=2.0)
            if died is None:
                raise
            raise died from None
        finally:  # finished, failed or closed: the workers stop now, not whenever GC frees them
            if cfg.num_workers > 0:
                _stop_workers(batches)

    def state_dict(self) -> dict:
        cfg = self.cfg
        return {
            "consumed_samples": self.consumed_samples,
            "epoch": self.epoch,
            "blend": [[float(w), os.path.abspath(p)] for w, p in cfg.blend],  # for the reader
            "weights": cfg.weights,
            "store_ids": [s.store_id for s in self.dataset.stores],  # stores may move; ids stay
            "seed": cfg.seed, "seq_len": cfg.seq_len, "mode": cfg.mode, "split": cfg.split,
            "trajectories": None if cfg.trajectories is None else os.path.abspath(cfg.trajectories),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue after ``state["consumed_samples"]``; the blend and packing must be unchanged."""
        mine = self.state_dict()
        for name in ("weights", "store_ids", "seed", "seq_len", "mode", "split", "trajectories"):
            if state.get(name) != mine[name]:
                raise UsageError(f"data state: {name} was {state.get(name)!r} when saved, now {mine[name]!r}; "
                                 "a changed data mix starts a new run or phase (--init-from, not --resume)")
        per_step = self.cfg.micro_batch_size * self.size
        if state["consumed_samples"] % per_step:
            raise UsageError(f"data state: consumed_samples {state['consumed_samples']} is not a multiple "
                             f"of micro_batch_size * data_parallel_size = {per_step}")
        self.consumed_samples = int(state["consumed_samples"])
