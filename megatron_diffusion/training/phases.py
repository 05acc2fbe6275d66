"""Multi-phase runs: a curriculum of training phases in one run config (docs/method.md 10).

Stable-DiffCoder's recipe for new knowledge is AR training on the new data, then small-block
diffusion CPT. A ``phases:`` list chains such runs: each phase is the YAML's sections with the
phase's keys on top, then the command line's overrides; all are validated before any work.
Phase ``i`` runs in ``RUN_DIR/phase<i>-<name>`` as an ordinary run, starting from the previous
phase's final checkpoint (weights only); ``--resume auto`` skips finished phases; a preempted
phase stops the run. docs/cpt.md, "Multi-phase runs", has the rules.
"""

import copy
import re
from dataclasses import dataclass
from pathlib import Path

from megatron_diffusion.config import RunConfig, flatten, load_config, read_yaml
from megatron_diffusion.data.tokenizer import check_tokenizer_hash
from megatron_diffusion.data.vocab import resolve_vocab
from megatron_diffusion.errors import UsageError
from megatron_diffusion.parallel.preemption import MARKER, clear_marker, write_marker
from megatron_diffusion.training.checkpoint import latest_checkpoint, read_meta
from megatron_diffusion.training.corpus_source import CorpusSource
from megatron_diffusion.training.trainer import Trainer, say_on_rank0

NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class Phase:
    index: int
    """1-based position in the curriculum."""
    name: str
    cfg: object
    """The phase's ``RunConfig`` (not yet completed from the data store)."""
    run_dir: Path
    source_cls: type = CorpusSource
    """The phase's ``StepSource`` class (its ``training.step_source``)."""


def _phase_keys(i: int, raw) -> tuple[str, dict]:
    """(name, flat ``section.field`` dict) of phase ``i``; one-line errors naming ``phases[i]``."""
    where = f"phases[{i}]"
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a mapping of config keys with train_iters")
    body = dict(raw)
    name = body.pop("name", f"phase{i + 1}")
    if not isinstance(name, str) or not NAME.match(name):
        raise UsageError(f"{where}.name: got {name!r}, expected letters, digits, '_' or '-'")
    iters = body.pop("train_iters", None)
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise UsageError(f"{where}.train_iters: got {iters!r}, expected an integer >= 1")
    flat = flatten(body)
    if "training.train_iters" in flat:
        raise UsageError(f"{where}: give train_iters once (not training.train_iters)")
    return name, {**flat, "training.train_iters": iters}


def _plain(keys: dict) -> tuple[type, type]:
    return RunConfig, CorpusSource


def load_phases(config_path, overrides, run_dir, kind=_plain) -> list[Phase] | None:
    """The phases of ``config_path`` (None when it has no ``phases`` list), each validated
    except for what the data store completes (vocabulary). ``kind(phase_keys)`` gives a phase's
    ``(config class, step source class)`` (the entry point knows the later phases' sources)."""
    raw = read_yaml(config_path).get("phases")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise UsageError("phases: expected a non-empty list of phases")
    phases, names = [], set()
    for i, entry in enumerate(raw):
        name, keys = _phase_keys(i, entry)
        if name in names:
            raise UsageError(f"phases[{i}].name: {name!r} is used twice")
        names.add(name)
        try:
            config_cls, source_cls = kind(keys)
            cfg = load_config(config_path, overrides, validate=False, phase=keys, cls=config_cls)
        except UsageError as e:
            raise UsageError(f"phases[{i}] ({name}): {e}") from None
        phases.append(Phase(i + 1, name, cfg, _phase_dir(Path(run_dir), i + 1, name), source_cls))
    return phases


def _phase_dir(run_dir: Path, index: int, name: str) -> Path:
    """``RUN_DIR/phase<i>-<name>``; a run begun before phases were called so keeps its
    ``stage<i>-<name>`` directory, so ``--resume auto`` continues it."""
    new, old = run_dir / f"phase{index}-{name}", run_dir / f"stage{index}-{name}"
    return old if old.is_dir() and not new.exists() else new


def _validate(phase: Phase):
    """Validate a copy completed from the data store, so a bad phase 2 fails before phase 1;
    returns the phase's first store."""
    cfg = copy.deepcopy(phase.cfg)
    try:
        stores = resolve_vocab(cfg)
        cfg.validate()
    except UsageError as e:
        raise UsageError(f"phases[{phase.index - 1}] ({phase.name}): {e}") from None
    return stores[0]


def _check_tokenizers(phases: list[Phase], stores: list) -> None:
    """A phase starts from the previous phase's checkpoint, so its data must be tokenized like
    the previous phase's (checked before phase 1 trains, not when phase 2 starts)."""
    for prev, (phase, store) in zip(stores, zip(phases[1:], stores[1:])):
        check_tokenizer_hash(f"phases[{phase.index - 1}] ({phase.name}): store {store.path} was "
                             "made with another tokenizer than the previous phase's store "
                             f"{prev.path}, whose checkpoint it starts from",
                             ("hash", store.tokenizer_hash), ("previous", prev.tokenizer_hash))


def _final_checkpoint(phase: Phase):
    """The phase's checkpoint at its last step, or None while it is unfinished."""
    latest = latest_checkpoint(phase.run_dir)
    if latest is None:
        return None
    done = int(read_meta(latest)["step"]) >= phase.cfg.training.train_iters
    return latest if done else None


def run_phases(phases: list[Phase], run_dir, *, resume: str, init_from, argv,
               overwrite: bool = False) -> int:
    """Run the unfinished phases in order; returns the exit code of the last one run. A phase
    that was preempted (even during its final save or validation, with every step done) stops
    the run with ``PREEMPTED`` in ``run_dir``; ``overwrite`` replaces every phase's run."""
    if resume not in ("auto", "none"):
        raise UsageError(f"--resume: a multi-phase run takes 'auto' or 'none', got {resume!r}")
    if overwrite and resume != "none":
        raise UsageError(f"--overwrite: replaces every phase's run in {run_dir}, it cannot be "
                         f"combined with --resume {resume}")
    _check_tokenizers(phases, [_validate(phase) for phase in phases])
    start_from = init_from
    for phase in phases:
        done = _final_checkpoint(phase) if resume == "auto" else None
        where = f"phase {phase.index}/{len(phases)} ({phase.name})"
        if done is not None:
            say_on_rank0(f"{where}: finished at {done}, skipped")
            start_from = done
            continue
        say_on_rank0(f"{where}: {phase.cfg.training.train_iters} steps in {phase.run_dir}")
        trainer = Trainer(phase.cfg, phase.run_dir, phase.source_cls(phase.cfg), resume=resume,
                          init_from=start_from, argv=argv, overwrite=overwrite).setup()
        if trainer.rank == 0:
            clear_marker(run_dir)
        code = trainer.train()
        preempted = trainer.preempted  # agreed by every rank
        if code != 0 or preempted or trainer.step < phase.cfg.training.train_iters:
            if trainer.rank == 0 and preempted:
                write_marker(run_dir, f"phase{phase.index} {trainer.step}")
            return code
        start_from = _final_checkpoint(phase)
    return 0
