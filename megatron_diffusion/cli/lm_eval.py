"""``megatron-diffusion lm-eval ARGS``: lm-evaluation-harness's command line with the
``megatron_diffusion`` model registered (``lm_eval_model``; the ``[lmeval]`` extra).

    megatron-diffusion lm-eval --model megatron_diffusion \\
        --model_args checkpoint=DIR,strategy=threshold --tasks mbpp --batch_size 8

Every argument goes to lm-eval unchanged (``megatron-diffusion lm-eval --help`` is lm-eval's
help); the model's own arguments are listed in docs/evaluation.md.
"""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("passthrough", nargs=argparse.REMAINDER,
                        help="lm-eval's arguments (--model megatron_diffusion --model_args ...)")


def run(args: argparse.Namespace) -> int:
    from megatron_diffusion.evaluation.lm_eval_model import harness_main

    return harness_main(list(args.passthrough))
