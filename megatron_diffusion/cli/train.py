"""``megatron-diffusion train --config CFG [--run-dir DIR] [--resume auto] [key=value ...]``.

One process by default; under ``torchrun`` or SLURM (``srun``) every rank runs this same command.
A config with a ``stages:`` list runs its stages in order (``training/stages.py``).
``training.step_source`` names what each step consumes (``SOURCE_CLASSES``,
``training/step_source.py``).
"""

import sys
from pathlib import Path

from megatron_diffusion.config import load_config
from megatron_diffusion.errors import UsageError, check_choice
from megatron_diffusion.parallel.process_groups import destroy
from megatron_diffusion.parallel.run_dir import resolve_run_dir


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="YAML run config (see examples/)")
    p.add_argument("--run-dir", default=None,
                   help="run directory (metrics.jsonl, checkpoints); default runs/<config name>, "
                        "or under SLURM runs/<job name>-<job id> (stable across requeues)")
    p.add_argument("--resume", default="none",
                   help="'auto' (newest complete checkpoint in the run dir, if any), 'none', "
                        "or a checkpoint directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --run-dir (a run dir with checkpoints needs this or "
                        "--resume auto)")
    p.add_argument("--init-from", default=None,
                   help="load weights only from this checkpoint (CPT from a converted AR model)")
    p.add_argument("--wandb", choices=("off", "offline", "online"), default=None,
                   help="override training.wandb")
    p.add_argument("overrides", nargs="*", metavar="SECTION.FIELD=VALUE",
                   help="config overrides, e.g. training.train_iters=100 model.num_layers=2")


def default_run_dir(config_path: str) -> Path:
    return Path(resolve_run_dir(None, default_name=Path(config_path).stem))


def _corpus():
    from megatron_diffusion.config import RunConfig
    from megatron_diffusion.training.corpus_source import CorpusSource

    return RunConfig, CorpusSource


def _onpolicy():
    from megatron_diffusion.onpolicy.config import OnPolicyRunConfig
    from megatron_diffusion.onpolicy.source import OnPolicySource

    return OnPolicyRunConfig, OnPolicySource


SOURCE_CLASSES = {"corpus": (None, _corpus), "onpolicy": ("onpolicy", _onpolicy)}
"""``training.step_source`` -> (the config section that only this source reads, or None; its
``(run config class, StepSource class)``, imported when chosen). A new source adds a line."""


def _has_section(keys, section: str) -> bool:
    return any(k == section or k.startswith(f"{section}.") for k in keys)


def _kinds(config_path: str, overrides: list[str]):
    """``kind(stage_keys) -> (config class, source class)`` of the run or of a stage, named by
    its ``training.step_source`` (the YAML's, then the stage's, then the command line's). A
    section that another source reads, or a missing one that the named source needs, is one
    line naming ``training.step_source``."""
    from megatron_diffusion.config import flatten, parse_override, read_yaml

    given = flatten({k: v for k, v in read_yaml(config_path).items() if k != "stages"})
    overridden = dict(map(parse_override, overrides))

    def kind(stage_keys: dict):
        keys = {**given, **stage_keys, **overridden}
        name = keys.get("training.step_source", "corpus")
        check_choice("training.step_source", name, tuple(SOURCE_CLASSES))
        for other, (section, _) in SOURCE_CLASSES.items():
            if section is None:
                continue
            if other != name and _has_section(keys, section):
                raise UsageError(f"training.step_source: got {name!r}, but the config has the "
                                 f"{section} section, which the {other!r} source reads")
            if other == name and not _has_section(keys, section):
                raise UsageError(f"training.step_source: {name!r} needs the {section} section")
        return SOURCE_CLASSES[name][1]()

    return kind


def run(args) -> int:
    # the training modules load megatron-core (seconds): imported here, not for ``train --help``
    from megatron_diffusion.training.stages import load_stages, run_stages
    from megatron_diffusion.training.trainer import Trainer

    overrides = list(args.overrides) + ([f"training.wandb={args.wandb!r}"] if args.wandb else [])
    if args.resume not in ("none", "auto") and not Path(args.resume).is_dir():
        raise UsageError(f"--resume: {args.resume} is not 'auto', 'none' or a checkpoint directory")
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.config)
    kind = _kinds(args.config, overrides)
    stages = load_stages(args.config, overrides, run_dir, kind=kind)
    if stages is not None:  # a curriculum (training/stages.py)
        code = run_stages(stages, run_dir, resume=args.resume, init_from=args.init_from,
                          argv=sys.argv, overwrite=args.overwrite)
        destroy()
        return code
    config_cls, source_cls = kind({})
    cfg = load_config(args.config, overrides, validate=False, cls=config_cls)
    trainer = Trainer(cfg, run_dir, source_cls(cfg), resume=args.resume, init_from=args.init_from,
                      argv=sys.argv, overwrite=args.overwrite).setup()
    code = trainer.train()
    destroy()
    return code
