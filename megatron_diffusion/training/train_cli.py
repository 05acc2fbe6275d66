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


def run(args) -> int:
    # the training modules load megatron-core (seconds): imported here, not for ``train --help``
    from megatron_diffusion.training.stages import load_stages, run_stages
    from megatron_diffusion.training.trainer import Trainer

    overrides = list(args.overrides) + ([f"training.wandb={args.wandb!r}"] if args.wandb else [])
    if args.resume not in ("none", "auto") and not Path(args.resume).is_dir():
        raise UsageError(f"--resume: {args.resume} is not 'auto', 'none' or a checkpoint directory")
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.config)
    stages = load_stages(args.config, overrides, run_dir)
    if stages is not None:  # a curriculum (training/stages.py)
        code = run_stages(stages, run_dir, resume=args.resume, init_from=args.init_from,
                          argv=sys.argv)
        destroy()
        return code
    cfg = load_config(args.config, overrides, validate=False)
    trainer = Trainer(cfg, run_dir, resume=args.resume, init_from=args.init_from,
                      argv=sys.argv, overwrite=args.overwrite).setup()
    code = trainer.train()
    destroy()
    return code
