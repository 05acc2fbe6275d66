"""Staged runs: a curriculum of training stages in one run config (docs/method.md 10).

Stable-DiffCoder's recipe for new knowledge is AR training on the new data, then continual
pretraining with a small-block diffusion objective. A run config may chain such stages::

    stages:
      - name: ar
        train_iters: 200
        loss.objective: ar
        attention.mode: causal
      - name: block4
        train_iters: 400
        attention: {mode: block, block_size: 4}
        model.logit_shift: true

Each stage is the YAML's sections with the stage's keys on top (``section.field`` or nested
mappings; ``train_iters`` is ``training.train_iters``), then the command line's overrides, which
apply to every stage. Every stage's config is built and validated before any work. Stage ``i``
runs in ``RUN_DIR/stage<i>-<name>`` as an ordinary run; stage 1 starts from ``--init-from`` (if
given), every later stage from the previous stage's final checkpoint (weights only: a fresh
optimizer, learning-rate schedule and corruption curriculum, laid out over its own
``train_iters``). ``--resume auto`` skips the stages whose final checkpoint exists and resumes
the first unfinished one from its newest checkpoint; a preempted stage stops the run (exit 0)
and the ``PREEMPTED`` marker is also written in ``RUN_DIR``, where the batch scripts look.
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
from megatron_diffusion.training.trainer import Trainer

NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class Stage:
    index: int
    """1-based position in the curriculum."""
    name: str
    cfg: object
    """The stage's ``RunConfig`` (not yet completed from the data store)."""
    run_dir: Path
    source_cls: type = CorpusSource
    """The stage's ``StepSource`` class (its ``training.step_source``)."""


def _stage_keys(i: int, raw) -> tuple[str, dict]:
    """(name, flat ``section.field`` dict) of stage ``i``; one-line errors naming ``stages[i]``."""
    where = f"stages[{i}]"
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a mapping of config keys with train_iters")
    body = dict(raw)
    name = body.pop("name", f"stage{i + 1}")
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


def load_stages(config_path, overrides, run_dir, kind=_plain) -> list[Stage] | None:
    """The stages of ``config_path`` (None when it has no ``stages`` list), each validated
    except for what the data store completes (vocabulary). ``kind(stage_keys)`` gives a stage's
    ``(config class, step source class)`` (the entry point knows the later stages' sources)."""
    raw = read_yaml(config_path).get("stages")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise UsageError("stages: expected a non-empty list of stages")
    stages, names = [], set()
    for i, entry in enumerate(raw):
        name, keys = _stage_keys(i, entry)
        if name in names:
            raise UsageError(f"stages[{i}].name: {name!r} is used twice")
        names.add(name)
        try:
            config_cls, source_cls = kind(keys)
            cfg = load_config(config_path, overrides, validate=False, stage=keys, cls=config_cls)
        except UsageError as e:
            raise UsageError(f"stages[{i}] ({name}): {e}") from None
        stages.append(Stage(i + 1, name, cfg, Path(run_dir) / f"stage{i + 1}-{name}", source_cls))
    return stages


def _validate(stage: Stage):
    """Validate a copy completed from the data store, so a bad stage 2 fails before stage 1;
    returns the stage's first store."""
    cfg = copy.deepcopy(stage.cfg)
    try:
        stores = resolve_vocab(cfg)
        cfg.validate()
    except UsageError as e:
        raise UsageError(f"stages[{stage.index - 1}] ({stage.name}): {e}") from None
    return stores[0]


def _check_tokenizers(stages: list[Stage], stores: list) -> None:
    """A stage starts from the previous stage's checkpoint, so its data must be tokenized like
    the previous stage's (checked before stage 1 trains, not when stage 2 starts)."""
    for prev, (stage, store) in zip(stores, zip(stages[1:], stores[1:])):
        check_tokenizer_hash(f"stages[{stage.index - 1}] ({stage.name}): store {store.path} was "
                             "made with another tokenizer than the previous stage's store "
                             f"{prev.path}, whose checkpoint it starts from",
                             ("hash", store.tokenizer_hash), ("previous", prev.tokenizer_hash))


def _final_checkpoint(stage: Stage):
    """The stage's checkpoint at its last step, or None while it is unfinished."""
    latest = latest_checkpoint(stage.run_dir)
    if latest is None:
        return None
    done = int(read_meta(latest)["step"]) >= stage.cfg.training.train_iters
    return latest if done else None


def run_stages(stages: list[Stage], run_dir, *, resume: str, init_from, argv,
               overwrite: bool = False) -> int:
    """Run the unfinished stages in order; returns the exit code of the last one run. A stage
    that was preempted (even during its final save or validation, with every step done) stops
    the run with ``PREEMPTED`` in ``run_dir``; ``overwrite`` replaces every stage's run."""
    if resume not in ("auto", "none"):
        raise UsageError(f"--resume: a staged run takes 'auto' or 'none', got {resume!r}")
    if overwrite and resume != "none":
        raise UsageError(f"--overwrite: replaces every stage's run in {run_dir}, it cannot be "
                         f"combined with --resume {resume}")
    _check_tokenizers(stages, [_validate(stage) for stage in stages])
    start_from = init_from
    for stage in stages:
        done = _final_checkpoint(stage) if resume == "auto" else None
        if done is not None:
            start_from = done
            continue
        trainer = Trainer(stage.cfg, stage.run_dir, stage.source_cls(stage.cfg), resume=resume,
                          init_from=start_from, argv=argv, overwrite=overwrite).setup()
        if trainer.rank == 0:
            clear_marker(run_dir)
        code = trainer.train()
        preempted = getattr(trainer, "preempted", False)  # agreed by every rank
        if code != 0 or preempted or trainer.step < stage.cfg.training.train_iters:
            if trainer.rank == 0 and preempted:
                write_marker(run_dir, f"stage{stage.index} {trainer.step}")
            return code
        start_from = _final_checkpoint(stage)
    return 0
