"""Checkpoints: megatron ``dist_checkpointing`` (sharded, reshardable), written atomically.

``RUN_DIR/checkpoints/iter_XXXXXXX/`` holds the model and optimizer shards, ``meta.json``,
each data-parallel rank's data state, each rank's RNG state and the tokenizer; ``latest`` names
the newest complete one. A checkpoint is written as ``.tmp`` and renamed after every rank
finished, so a crash leaves the previous one valid. ``checkpoint_meta`` builds every
``meta.json`` (trainer and ``convert``) and ``read_meta`` is the one checked reader.
docs/training.md, "Checkpoints", has the layout.
"""

import json
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state

from megatron_diffusion.data.checksums import crc32_file
from megatron_diffusion.data.tokenizer import check_tokenizer_hash, tokenizer_file_hash
from megatron_diffusion.errors import UsageError
from megatron_diffusion.fileio import write_text_atomic

_ITER = re.compile(r"^iter_(\d{7})$")
CHECKPOINT_FORMAT = "megatron-diffusion-checkpoint"
"""``meta.json`` ``format`` of every checkpoint (trainer, ``hf-to-mcore``; ``reshard`` keeps it)."""
FORMAT_VERSION = 1
SHARDING_METADATA = {"distrib_optim_sharding_type": "fully_reshardable",
                     "chained_optim_avoid_prefix": True, "singleton_local_shards": False}


def checkpoint_meta(cfg, *, tokenizer_hash: str, consumed_samples: int = 0, **fields) -> dict:
    """A checkpoint's ``meta.json`` (``save_checkpoint`` adds ``step``): format and version, the
    run config ``cfg``, the tokenizer hash, the samples consumed so far, then ``fields`` in the
    order given (``parallel``, ``weights_only``, ``converted_from``, ``generation``, ...)."""
    return {"format": CHECKPOINT_FORMAT, "format_version": FORMAT_VERSION,
            "config": cfg.to_dict(), "tokenizer_hash": tokenizer_hash,
            "consumed_samples": consumed_samples, **fields}


def check_format(meta: dict, where: str) -> dict:
    """``meta`` if it is a checkpoint meta this code reads, else a one-line ``UsageError``
    starting with ``where`` (the file it came from)."""
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{where} has format {meta.get('format')!r}, expected "
                         f"{CHECKPOINT_FORMAT!r} (not a megatron-diffusion checkpoint)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{where} has format_version {meta.get('format_version')!r}; this "
                         f"megatron-diffusion reads version {FORMAT_VERSION}")
    return meta


def checkpoint_root(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def _rank() -> int:
    """This process's global rank: torch.distributed's, or before it is up the launcher's
    ``RANK`` (``--resume auto`` picks its checkpoint before the process group exists)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


CHECKSUMS = "checksums.json"
"""Per file of a checkpoint: ``[size, CRC-32]`` (``checksums.json``, written before the rename
that makes the checkpoint exist)."""
SHARED_FILES = ("meta.json", "tokenizer.json", "model_optim/.metadata", "model_optim/common.pt",
                "model_optim/metadata.json")


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def _every_rank(value) -> list:
    """``value`` of every rank in rank order (an all-gather; ``[value]`` in one process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


_WRITER = re.compile(r"(?:model_optim/__(\d+)_\d+\.distcp|rng/rank_(\d+)\.pt)")


def _own_files(path: Path, rank: int, world: int = 1) -> list[str]:
    """The per-rank files (shards, RNG states) of checkpoint ``path`` that rank ``rank`` of
    ``world`` checksums: those written by ranks congruent to it modulo ``world``, so every
    file is covered once whatever the world size the checkpoint was saved with."""
    files = sorted(list((path / "model_optim").glob("__*_*.distcp")) + list((path / "rng").glob("rank_*.pt")))
    own = []
    for f in files:
        m = _WRITER.fullmatch(f.relative_to(path).as_posix())
        if m and int(m.group(1) or m.group(2)) % world == rank:
            own.append(m.group(0))
    return own


def _shared_files(path: Path) -> list[str]:
    loader = sorted(p.relative_to(path).as_posix() for p in (path / "loader").glob("*.json"))
    return [f for f in SHARED_FILES if (path / f).is_file()] + loader


def _file_sums(path: Path, files: list[str]) -> dict:
    return {f: [(path / f).stat().st_size, crc32_file(path / f)] for f in files}


def checksum_problem(path: Path) -> str | None:
    """The first file of this rank's share of checkpoint ``path`` (the shared files and its
    share of the per-rank ones, ``_own_files``) whose size or CRC-32 differs from
    ``checksums.json``; None when all match or the checkpoint predates checksums. The ranks
    verify their shares in parallel; ``agree_on_checkpoint`` makes the verdict every rank's."""
    f = path / CHECKSUMS
    if not f.is_file():
        return None
    sums = _read_json(f, path)["files"]
    for rel in _shared_files(path) + _own_files(path, _rank(), _world()):
        if rel not in sums:
            continue
        size, crc = sums[rel]
        got = _file_sums(path, [rel])[rel]
        if got[0] != size:
            return f"checkpoint {path}: {rel} is truncated or overwritten ({got[0]} bytes, expected {size})"
        if got[1] != crc:
            return f"checkpoint {path}: {rel} fails its checksum (corrupted)"
    for rel in sums:
        if not (path / rel).is_file():
            return f"checkpoint {path}: {rel} is missing"
    return None


def _use_in_process_results_queue() -> None:
    """dist_checkpointing's file writer hands its results back through a queue that it creates as
    a *spawn*-context Manager (a helper process that re-imports ``__main__``; our entry points run
    from ``python -c`` have no main guard). Our saves are synchronous: the writer's result is put
    and read back in this process, so a plain ``queue.Queue`` serves, and no helper process is
    started (a fork-context Manager was tried: forking the trainer for it can crash the child,
    seen as a segfault in its garbage collector, and it outlived every save)."""
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def sharded_state_dict(chunks, optimizer=None, is_loading: bool = False) -> dict:
    sd = {}
    for i, chunk in enumerate(chunks):
        key = "model" if len(chunks) == 1 else f"model{i}"
        module = getattr(chunk, "module", chunk)
        sd[key] = module.sharded_state_dict(metadata=SHARDING_METADATA)
    if optimizer is not None:
        sd["optimizer"] = optimizer.sharded_state_dict(sd, is_loading=is_loading,
                                                       metadata=SHARDING_METADATA)
    return sd


def list_checkpoints(run_dir) -> list[Path]:
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _ITER.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def has_checkpoints(run_dir) -> bool:
    """True when ``run_dir`` holds a run's checkpoints (complete ones or a ``latest`` pointer)."""
    root = checkpoint_root(run_dir)
    return bool(list_checkpoints(run_dir)) or (root / "latest").exists()


def _pointer_target(run_dir, say=None) -> Path | None:
    """The checkpoint ``latest`` names, if it names one; ``say`` hears about a bad pointer."""
    root = checkpoint_root(run_dir)
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_bytes().decode("utf-8", errors="replace").strip()
    if _ITER.match(name) and (root / name / "meta.json").is_file():
        return root / name
    if say is not None:
        say(f"{pointer} names {name[:40]!r}, not a complete checkpoint; using the newest "
            "complete one")
    return None


def latest_checkpoint(run_dir, say=None) -> Path | None:
    """The checkpoint named by ``latest`` (falling back to the newest complete one)."""
    target = _pointer_target(run_dir, say)
    if target is not None:
        return target
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def newest_loadable_checkpoint(run_dir, say, older_than: Path | None = None) -> Path | None:
    """``--resume auto``: ``latest``'s target, else the newest checkpoint whose files are all
    there whole (``checkpoint_problem``); ``say`` is told about every one skipped. None when
    the run has no checkpoint; UsageError when it has some and none loads. ``older_than``:
    only checkpoints before that one (another rank could not load it)."""
    told = [older_than] if older_than is not None else []

    def tell(message):
        told.append(message)
        say(message)

    candidates = [p for p in [_pointer_target(run_dir, tell)] if p is not None]
    candidates += [p for p in reversed(list_checkpoints(run_dir)) if p not in candidates]
    if older_than is not None:
        candidates = [p for p in candidates if p.name < older_than.name]
        if not candidates:
            raise UsageError(f"--resume auto: no checkpoint in {checkpoint_root(run_dir)} loads "
                             f"on every rank (none older than {older_than.name}); pass "
                             "--overwrite to start again")
    problems = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            if told:
                say(f"resuming from {path.name}")
            return path
        problems.append(problem)
        tell(f"{problem}; falling back to an older checkpoint")
    if problems:
        raise UsageError(f"--resume auto: no checkpoint in {checkpoint_root(run_dir)} loads "
                         f"(newest: {problems[0]}); pass --overwrite to start again")
    return None


def check_own_tokenizer(ckpt: Path, meta: dict, option: str = "--checkpoint") -> None:
    """``ckpt/tokenizer.json`` is the tokenizer ``meta`` records; no file, or no recorded hash
    (a checkpoint from before hashes were recorded): nothing to compare."""
    tok = ckpt / "tokenizer.json"
    if tok.is_file():
        check_tokenizer_hash(f"{option}: {tok} is not the tokenizer checkpoint {ckpt} was "
                             "trained with", ("hash", tokenizer_file_hash(tok, option)),
                             (f"{ckpt / 'meta.json'} tokenizer_hash", meta.get("tokenizer_hash")))


def agree_on_checkpoint(path: Path | None, run_dir, say, fall_back: bool,
                        notes=()) -> Path | None:
    """Once the process group is up, the checkpoint every rank resumes from: each rank chose
    ``path`` verifying only its share of the per-rank files, so start at the oldest choice and
    verify every rank's share of it, stepping back (``fall_back``: ``--resume auto``) while any
    rank finds a problem; without ``fall_back`` the first problem is every rank's error.
    ``notes``: what this rank found while choosing, said (by ``say``) for the ranks that chose
    the oldest."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return path
    gathered = _every_rank((None if path is None else str(path), list(notes)))
    chosen = [c for c, _ in gathered]
    if None in chosen:  # no checkpoint on some rank's view: the ranks disagree on the run dir
        if any(chosen):
            raise UsageError(f"--resume: the ranks see different checkpoints in {run_dir} "
                             f"({sorted(set(map(str, chosen)))}); is the run dir shared?")
        return None
    path = Path(min(chosen, key=lambda c: Path(c).name))
    verified = Path(chosen[dist.get_rank()]) == path  # this rank's share already checked
    if len(set(chosen)) > 1:
        for rank, (choice, told) in enumerate(gathered):
            for note in told if rank and Path(choice) == path else ():
                say(f"rank {rank}: {note}")
    while True:
        problems = _every_rank(None if verified else checksum_problem(path))
        problem = next((p for p in problems if p), None)
        if problem is None:
            return path
        if not fall_back:
            raise UsageError(f"--resume: {problem}")
        say(f"{problem}; falling back to an older checkpoint")
        try:  # the ranks' own checks differ: the oldest choice, or the first rank's error
            older, error = str(newest_loadable_checkpoint(run_dir, say, older_than=path)), None
        except UsageError as e:
            older, error = None, str(e)
        outcomes = _every_rank((older, error))
        errors = [e for _, e in outcomes if e]
        if errors:
            raise UsageError(errors[0])
        path = Path(min((o for o, _ in outcomes), key=lambda c: Path(c).name))
        verified = Path(outcomes[dist.get_rank()][0]) == path


def checkpoint_problem(path) -> str | None:
    """What makes checkpoint ``path`` unloadable, naming the file, or None. Reads only
    ``meta.json``, the loader states and the shard index (``.metadata``); every shard file it
    lists must exist and hold its last byte."""
    from torch.distributed.checkpoint import FileSystemReader

    path = Path(path)
    try:
        read_meta(path)
        for f in sorted((path / "loader").glob("*.json")):
            _read_json(f, path)
    except UsageError as e:
        return str(e)
    shards = path / "model_optim"
    for name in (".metadata", "common.pt", "metadata.json"):
        if not (shards / name).is_file():
            return f"checkpoint {path}: model_optim/{name} is missing"
    try:
        storage = FileSystemReader(str(shards)).read_metadata().storage_data
    except Exception as e:  # a truncated pickle: EOFError, UnpicklingError, ...
        return f"checkpoint {path}: model_optim/.metadata is unreadable ({type(e).__name__})"
    needed: dict[str, int] = {}
    for info in storage.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for rel, size in sorted(needed.items()):
        f = shards / rel
        if not f.is_file():
            return f"checkpoint {path}: model_optim/{rel} is missing"
        if f.stat().st_size < size:
            return (f"checkpoint {path}: model_optim/{rel} is truncated ({f.stat().st_size} "
                    f"bytes, the index needs {size})")
    try:
        return checksum_problem(path)
    except UsageError as e:
        return str(e)


def save_checkpoint(run_dir, step: int, chunks, optimizer, *, meta: dict, loader_state: dict,
                    tokenizer_path: str | None = None, keep_last: int = 3) -> Path:
    """Write checkpoint ``step`` from every rank; returns its final path.

    Refuses (RuntimeError on every rank, nothing written, nothing pruned) when any weight is
    not finite: the previous checkpoint stays the newest and ``latest``. A write that fails
    (full disk, read-only or vanished file system) on any rank is a one-line ``UsageError`` on
    every rank, the partial ``.tmp`` directory removed and the previous checkpoint kept."""
    from megatron_diffusion.training.finite import weights_finite

    root = checkpoint_root(run_dir)
    name = f"iter_{step:07d}"
    if not weights_finite(chunks):
        kept = latest_checkpoint(run_dir)
        raise RuntimeError(f"step {step}: non-finite weights, checkpoint not saved (the newest "
                           f"checkpoint {kept.name if kept else 'none'} is kept); resume from it "
                           "with a lower optimizer.lr")
    final, tmp = root / name, root / f"{name}.tmp"
    _agreed(lambda: _prepare(root, tmp) if _rank() == 0 else None, root, tmp, final)
    _use_in_process_results_queue()
    _agreed(lambda: _write_shards(tmp, chunks, optimizer, loader_state), root, tmp, final)
    sums = {}
    _agreed(lambda: sums.update(_file_sums(tmp, _own_files(tmp, _rank(), _world()))), root, tmp, final)
    sums = {k: v for part in _every_rank(sums) for k, v in part.items()}  # every rank's files
    pause = float(os.environ.get("MEGATRON_DIFFUSION_FAULT_PAUSE_BEFORE_COMMIT", "0"))
    if pause:  # fault injection for tests: a window in which the shards exist but are not final
        import time

        time.sleep(pause)
    commit = lambda: _commit(run_dir, tmp, final, meta, step, tokenizer_path, keep_last, sums)  # noqa: E731
    _agreed(lambda: commit() if _rank() == 0 else None, root, tmp, final)
    return final


def _prepare(root: Path, tmp: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("*.tmp"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
    (tmp / "model_optim").mkdir(parents=True)
    (tmp / "loader").mkdir()
    (tmp / "rng").mkdir()


def _write_shards(tmp: Path, chunks, optimizer, loader_state: dict) -> None:
    import logging

    # its writer logs a failed write before raising it; ``_agreed`` reports it in one line
    writer_log = logging.getLogger("megatron.core.dist_checkpointing.strategies.filesystem_async")
    level = writer_log.level
    writer_log.setLevel(logging.CRITICAL)
    try:
        dist_checkpointing.save(sharded_state_dict(chunks, optimizer), str(tmp / "model_optim"))
    finally:
        writer_log.setLevel(level)
    # loader state: one per data-parallel rank (written by its first TP/PP/CP rank)
    if parallel_state.get_tensor_model_parallel_rank() == 0 and \
            parallel_state.get_pipeline_model_parallel_rank() == 0 and \
            parallel_state.get_context_parallel_rank() == 0:
        dp = parallel_state.get_data_parallel_rank()
        (tmp / "loader" / f"dp_{dp:03d}.json").write_text(json.dumps(loader_state))
    torch.save(rng_state(), tmp / "rng" / f"rank_{_rank():05d}.pt")


def _commit(run_dir, tmp: Path, final: Path, meta: dict, step: int, tokenizer_path, keep_last,
            sums: dict):
    """Rank 0: meta.json, then ``checksums.json`` (every rank's files and the shared ones),
    then the rename that makes the checkpoint exist, then ``latest``."""
    root = tmp.parent
    if tokenizer_path:
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    (tmp / "meta.json").write_text(json.dumps(dict(meta, step=step), indent=2))
    files = {**sums, **_file_sums(tmp, _shared_files(tmp))}
    (tmp / CHECKSUMS).write_text(json.dumps({"algorithm": "crc32", "files": files}, indent=0,
                                            sort_keys=True))
    aside = root / f"{final.name}.old.tmp"
    if final.exists():  # re-saving the same step (e.g. preemption right after a save)
        os.replace(final, aside)
    os.replace(tmp, final)
    write_text_atomic(root / "latest", final.name)
    shutil.rmtree(aside, ignore_errors=True)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _agreed(work, root: Path, tmp: Path, final: Path) -> None:
    """Run this rank's part of a save, then agree (all-reduce) that every rank succeeded; on
    any failure every rank raises one ``UsageError`` and rank 0 removes the partial ``tmp``."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    error = None
    try:
        work()
    except (Exception, CheckpointException) as e:  # ENOSPC/EROFS, torch's "unexpected pos"
        error = e
    failed = torch.tensor([0 if error is None else 1], dtype=torch.int32)
    if dist.is_initialized():
        if dist.get_backend() == "nccl":
            failed = failed.cuda()
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if not failed.item():
        return
    reason = _write_failure(error, root) if error is not None else "failed on another rank"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    raise UsageError(f"checkpoint {final}: cannot write ({reason}); the previous checkpoint "
                     "is kept") from None


def _write_failure(e: Exception, root: Path) -> str:
    """The reason in a few words; torch's writers lose the errno, so look at the free space."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    first = (lines[-1] if lines else type(e).__name__)[:200]  # the innermost cause
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return first
    if free < (1 << 20):
        return f"No space left on device: {free} bytes free on {root}; {first}"
    return first


def _read_json(f: Path, checkpoint: Path):
    try:
        return json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"checkpoint {checkpoint}: {f.relative_to(checkpoint)} is unreadable "
                         f"(truncated? {type(e).__name__})") from None


def read_meta(path) -> dict:
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise UsageError(f"checkpoint {path}: no meta.json (not a megatron-diffusion checkpoint, "
                         "or an incomplete one)")
    meta = _read_json(meta_file, path)
    if not isinstance(meta, dict) or "config" not in meta:
        raise UsageError(f"checkpoint {path}: meta.json has no run config (truncated?)")
    return check_format(meta, f"checkpoint {path}: meta.json")


PHASE_DIR = re.compile(r"(?:phase|stage)(\d+)-.+")
"""A multi-phase run's phase directory (``training/phases.py``; ``stage`` before the rename)."""


def resolve_checkpoint(path, option: str = "--checkpoint") -> Path:
    """A checkpoint directory, or a run directory / checkpoints dir (then its latest);
    ``option`` names the flag in errors."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{option}: {p} does not exist")
    if (p / "meta.json").is_file():
        return p
    for run_dir in (p, p.parent):
        found = latest_checkpoint(run_dir) if (run_dir / "checkpoints").is_dir() else None
        if found is not None:
            return found
    numbered = sorted((int(m.group(1)), d.name) for d in (p.iterdir() if p.is_dir() else ())
                      if (m := PHASE_DIR.fullmatch(d.name)) and (d / "checkpoints").is_dir())
    phases = [name for _, name in numbered]
    if phases:  # a multi-phase run's directory (training/phases.py): each phase is a run
        raise UsageError(f"{option}: {p} is a multi-phase run; give one phase's directory, e.g. "
                         f"{p / phases[-1]} (phases: {', '.join(phases)})")
    raise UsageError(f"{option}: {p} is not a megatron-diffusion checkpoint (no meta.json) "
                     "nor a run directory with checkpoints")


def load_checkpoint(path, chunks, optimizer=None, *, verified: bool = False) -> dict:
    """Load model (and optimizer) shards for this rank's layout; returns ``meta``. The files
    are checked first, every rank's problem raised on every rank; ``verified``: already done
    (``agree_on_checkpoint``)."""
    path = Path(path)
    meta = read_meta(path)
    problems = _every_rank(None if verified else checkpoint_problem(path))
    problem = next((p for p in problems if p), None)
    if problem is not None:
        raise UsageError(problem)
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    try:
        state = dist_checkpointing.load(sharded_state_dict(chunks, optimizer, is_loading=True),
                                        str(path / "model_optim"))
    except (Exception, CheckpointException) as e:  # bytes a checkpoint without checksums hides
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UsageError(f"checkpoint {path}: model_optim cannot be loaded ({first})") from None
    for i, chunk in enumerate(chunks):
        module = getattr(chunk, "module", chunk)
        module.load_state_dict(state["model" if len(chunks) == 1 else f"model{i}"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return meta


def load_loader_state(path) -> dict | None:
    dp = parallel_state.get_data_parallel_rank()
    f = Path(path) / "loader" / f"dp_{dp:03d}.json"
    return _read_json(f, Path(path)) if f.is_file() else None


def rng_state() -> dict:
    from megatron.core import tensor_parallel

    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}


def restore_rng(path) -> None:
    from megatron.core import tensor_parallel

    f = Path(path) / "rng" / f"rank_{_rank():05d}.pt"
    if not f.is_file():  # a different world size: keep the freshly seeded states
        return
    try:
        st = torch.load(f, weights_only=False)
    except Exception as e:
        raise UsageError(f"checkpoint {path}: {f.relative_to(path)} is unreadable "
                         f"(truncated? {type(e).__name__})") from None
    torch.set_rng_state(st["torch"])
    if st["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(st["tracker"])
