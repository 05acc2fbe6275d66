"""The ``megatron-diffusion`` command: a table of subcommands, each in its own module.

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Modules are
imported only when their subcommand runs, so ``--help`` and light commands stay fast (importing
megatron-core takes seconds). Bad input raises ``UsageError``: printed as one line, exit 2.
"""

import argparse
import importlib
import os
import signal
import sys
import warnings

from megatron_diffusion.errors import UsageError
from megatron_diffusion.parallel.preemption import Preemption

DESCRIPTION = ("Train code diffusion language models on megatron-core (block-diffusion CPT from an AR "
               "checkpoint) and sample from them fast. README.md and docs/ have every command.")

# name -> (module, one-line help). Kept in pipeline order.
COMMANDS = {
    "train-tokenizer": ("megatron_diffusion.cli.train_tokenizer", "train a byte-level BPE tokenizer (with [MASK]/EOS) on a corpus"),
    "preprocess": ("megatron_diffusion.cli.preprocess", "tokenize jsonl/parquet/HF dataset/source tree into a zarr token store"),
    "inspect-data": ("megatron_diffusion.cli.inspect_data", "write corrupted loader samples as JSON lines, for checking the statistics"),
    "check-store": ("megatron_diffusion.cli.check_store", "verify every chunk file of a token store against its checksums"),
    "show-mask": ("megatron_diffusion.cli.show_mask", "write the boolean attention mask of a mode as JSON or PNG"),
    "train": ("megatron_diffusion.cli.train", "train (CPT/SFT) a diffusion LM on megatron-core"),
    "sample": ("megatron_diffusion.cli.sample", "block-wise parallel sampling from a checkpoint"),
    "bench-sampler": ("megatron_diffusion.cli.bench_sampler", "sampler throughput vs the AR baseline, as JSON"),
    "distill-trajectories": ("megatron_diffusion.cli.distill_trajectories", "search reveal orders with a model and store them as step maps (Seed Diffusion 3.2)"),
    "convert": ("megatron_diffusion.cli.convert", "HF <-> megatron-diffusion checkpoints, resharding, verification"),
    "eval": ("megatron_diffusion.cli.eval", "held-out quality and its speed/quality curve (eval quality), HumanEval pass@k, infill/ELBO metrics"),
    "lm-eval": ("megatron_diffusion.cli.lm_eval", "lm-evaluation-harness with the megatron_diffusion model registered (the [lmeval] extra)"),
    "onpolicy-prompts": ("megatron_diffusion.cli.onpolicy_prompts", "write an on-policy prompt set: HumanEval (with tests) or Python sources (no tests)"),
    "onpolicy-eval": ("megatron_diffusion.cli.onpolicy_eval", "tokens/forward, steps/block and verifier score of a checkpoint on a prompt set"),
    "submit": ("megatron_diffusion.cli.submit", "submit a training job to SLURM from Python (submitit)"),
}

# Commands that save and requeue on SIGUSR2/SIGTERM (parallel/preemption.py, docs/slurm.md). Their
# handlers are installed before the command's module is imported: importing torch and
# megatron-core takes seconds, and a signal then (a preemption right after a requeue) killed the
# process with status 143, no PREEMPTED, no requeue. The trainer's handlers take over from these.
PREEMPTIBLE = ("train",)

# Commands whose arguments belong to another tool's parser, passed on verbatim (argparse would
# split `lm-eval --model X` into an unknown option and a positional).
PASSTHROUGH = ("lm-eval",)


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line with exit code 2 (its default code)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="megatron-diffusion", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            importlib.import_module(module_name).add_arguments(p)
        else:
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


# Known third-party warnings, silenced at the entry point (ours stay). megatron-core warns at
# import that Transformer Engine / Apex are missing and falls back to torch implementations;
# that is the expected state on CPU (and TE is an extra); FP8/TE requested without TE is a hard
# error instead. Every checkpoint load goes through megatron-core's dist_checkpointing, whose
# torch calls are deprecated upstream (load_state_dict, ShardedTensor: three FutureWarnings per
# load); the GGUF reader hands torch read-only memory-mapped arrays, which we copy at once.
_BENIGN_WARNINGS = (r".*(Transformer Engine|Apex).* not installed.*",
                    r".*Apex is not installed.*", r"full scope is deprecated.*",
                    r"`load_state_dict` is deprecated.*",
                    r"Please use DTensor instead and we are deprecating ShardedTensor.*",
                    r"The given NumPy array is not writable.*")


# Third-party progress bars (transformers' "Loading weights", datasets', lm-eval's tqdm bars)
# redraw with carriage returns, which a batch log keeps as one garbled line: off when stderr is
# not a terminal. Ours print plain lines there instead (progress.py). Read by those libraries at
# import, so set before any of them loads; a value the user set is kept.
_BAR_SWITCHES = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")


def quiet_third_party_bars(stream=None) -> None:
    stream = sys.stderr if stream is None else stream
    if not (hasattr(stream, "isatty") and stream.isatty()):
        for name in _BAR_SWITCHES:
            os.environ.setdefault(name, "1")


def main(argv: list[str] | None = None) -> int:
    as_program = argv is None  # the process's entry point (console script, python -m), not a caller
    argv = list(sys.argv[1:] if argv is None else argv)
    for pattern in _BENIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    quiet_third_party_bars()
    command = next((a for a in argv if not a.startswith("-")), None)
    only = command if command in COMMANDS else None
    preemption = Preemption().install() if only in PREEMPTIBLE else None
    try:
        return _run(argv, command, only)
    finally:
        if preemption is not None and as_program:
            # The command is over and what it had to save is saved: a SIGTERM/SIGUSR2 now must not
            # turn exit status 0 into 143 while the interpreter shuts down. SLURM sends one late to
            # a node back from a crash: its job-terminate for the failed run, retried after the
            # requeued run (same job id) started there (docs/slurm.md).
            for sig in preemption.signals:
                signal.signal(sig, signal.SIG_IGN)
        elif preemption is not None:
            preemption.uninstall()


def _run(argv: list[str], command: str | None, only: str | None) -> int:
    try:
        parser = build_parser(only)
    except ModuleNotFoundError as e:  # a command whose module is not there yet / missing extra
        print(f"megatron-diffusion: error: {command}: {e}", file=sys.stderr)
        return 2
    if only in PASSTHROUGH:
        args = argparse.Namespace(command=only, passthrough=argv[argv.index(only) + 1:])
    else:
        args = _parse(parser, argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except UsageError as e:
        print(f"megatron-diffusion {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"megatron-diffusion {args.command}: interrupted", file=sys.stderr)
        return 130


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args, extra = parser.parse_known_args(argv)
    if extra:  # SECTION.FIELD=VALUE after an option (train --config X a=1 --run-dir R b=2)
        if isinstance(getattr(args, "overrides", None), list) and \
                all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args

