"""``megatron-diffusion train --config CFG [--run-dir DIR] [--resume auto] [key=value ...]``.

One process by default; under ``torchrun`` or SLURM (``srun``) every rank runs this same command.
A config with a ``stages:`` list runs its stages in order (``training/stages.py``).
"""

import sys
from pathlib import Path

from megatron_diffusion.config import load_config
from megatron_diffusion.errors import UsageError
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


def _onpolicy(keys) -> bool:
    return any(k == "onpolicy" or k.startswith("onpolicy.") for k in keys)


def _kinds(config_path: str, overrides: list[str]):
    """``kind(stage_keys) -> (config class, trainer class)``: a run (or a stage) whose keys
    include the ``onpolicy`` section is an on-policy run (``onpolicy/trainer.py``)."""
    from megatron_diffusion.config import RunConfig, parse_override, read_yaml
    from megatron_diffusion.training.trainer import Trainer

    given = [*read_yaml(config_path).keys(), *(parse_override(o)[0] for o in overrides)]

    def kind(stage_keys: dict):
        if _onpolicy(given) or _onpolicy(stage_keys):
            from megatron_diffusion.onpolicy.config import OnPolicyRunConfig
            from megatron_diffusion.onpolicy.trainer import OnPolicyTrainer

            return OnPolicyRunConfig, OnPolicyTrainer
        return RunConfig, Trainer

    return kind


def run(args) -> int:
    # the training modules load megatron-core (seconds): imported here, not for ``train --help``
    from megatron_diffusion.training.stages import load_stages, run_stages

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
    config_cls, trainer_cls = kind({})
    cfg = load_config(args.config, overrides, validate=False, cls=config_cls)
    trainer = trainer_cls(cfg, run_dir, resume=args.resume, init_from=args.init_from,
                          argv=sys.argv, overwrite=args.overwrite).setup()
    code = trainer.train()
    destroy()
    return code
