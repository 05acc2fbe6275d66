"""``megatron-diffusion eval``: HumanEval pass@k with decoding speed, held-out infilling, quality.

    megatron-diffusion eval humaneval --checkpoint DIR --allow-code-execution --out DIR \\
        [--num-samples N] [--k 1,10] [--limit N] [sampler knobs | --ar-baseline]
    megatron-diffusion eval infill --checkpoint DIR --data FILE_OR_STORE --out DIR \\
        [--mask-rates 0.15,0.3,0.5,0.7,0.9]
    megatron-diffusion eval quality --checkpoint DIR --heldout FILE [FILE ...] --out REPORT.json \\
        [--reference DIR] [--lines 60] [--thresholds 0.9,0.7,0.5,0.3] [--block-size B]

HumanEval runs the code the model writes, so it refuses to start without
``--allow-code-execution``; the checks run sandboxed (docs/evaluation.md). The sandbox is set up
and probed before the model is loaded, so a machine that cannot contain the code fails fast.
The hidden ``--canonical`` flag uses the reference solutions instead of a model: a self-check of
the harness (every problem must pass).
"""

import argparse
import os

from megatron_diffusion.errors import UsageError
from megatron_diffusion.evaluation.executor import ISOLATION_MODES

DEFAULT_MASK_RATES = "0.15,0.3,0.5,0.7,0.9"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return sorted(set(values))


def _rate_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected mask rates strictly between 0 and 1, got {text!r}")
    return values


def _threshold_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected thresholds in (0, 1], got {text!r}")
    return values


def _add_quality(sub) -> None:
    q = sub.add_parser("quality", help="held-out line completion with bootstrap intervals, the "
                       "speed/quality curve and AUP; next-token / masked-token metrics "
                       "(docs/evaluation.md)",
                       description="quality report of a checkpoint on held-out source files")
    q.add_argument("--checkpoint", metavar="DIR", required=True, help="checkpoint or run directory")
    q.add_argument("--heldout", metavar="FILE", nargs="+", required=True,
                   help="held-out source files (not seen in training)")
    q.add_argument("--out", metavar="FILE", required=True, help="writes the report as JSON here")
    q.add_argument("--reference", metavar="DIR", help="checkpoint whose AR readout scores the NLL "
                   "of every generated line (same tokenizer vocabulary; e.g. the converted AR model)")
    lines = q.add_argument_group("line completion (the headline figures)")
    lines.add_argument("--lines", type=int, default=60, help="held-out lines to complete, split "
                       "evenly over the files (default 60)")
    lines.add_argument("--context-tokens", type=int, default=256,
                       help="prompt: the last N tokens before the line (default 256)")
    lines.add_argument("--max-line-tokens", type=int, default=48,
                       help="most tokens generated per line; decoding stops at a newline (default 48)")
    lines.add_argument("--seed", type=int, default=0, help="seed of the line choice and the bootstrap "
                       "(default 0)")
    lines.add_argument("--bootstrap-resamples", type=int, default=1000,
                       help="bootstrap resamples per 95%% interval (default 1000)")
    lines.add_argument("--within-points", type=float, default=1.0,
                       help="exact-match points a faster decode may lose against one token per step, "
                            "judged on the paired interval's lower bound (default 1)")
    decodes = q.add_argument_group("decodes")
    decodes.add_argument("--thresholds", type=_threshold_list, default=[0.9, 0.7, 0.5, 0.3],
                         metavar="T[,T...]",
                         help="threshold sampler points of the curve (default 0.9,0.7,0.5,0.3)")
    decodes.add_argument("--speculative", type=_int_list, default=[], metavar="D[,D...]",
                         help="self-speculative decoding points at these draft lengths (default none)")
    decodes.add_argument("--block-size", type=int,
                         help="inference block size (default: the training block size)")
    decodes.add_argument("--batch-size", type=int, default=4, help="prompts decoded together (default 4)")
    cont = q.add_argument_group("continuation accuracy (secondary)")
    cont.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per window (default 64)")
    cont.add_argument("--continuation-len", type=int, default=32,
                      help="tokens generated and compared with the true continuation (default 32)")
    cont.add_argument("--prompts-per-file", type=int, default=1, help="windows per file (default 1)")
    tokens = q.add_argument_group("token metrics")
    tokens.add_argument("--seq-len", type=int, default=128, help="row length of the token metrics (default 128)")
    tokens.add_argument("--max-rows", type=int, default=8, help="rows for the token metrics (default 8)")
    tokens.add_argument("--mask-rates", type=_rate_list, default=[0.15, 0.5, 0.9], metavar="R[,R...]",
                        help="masked-token metric rates (default 0.15,0.5,0.9)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="task", metavar="TASK", parser_class=type(parser))
    sub.required = True

    he = sub.add_parser("humaneval", help="pass@k on HumanEval (executes model-written code, sandboxed)",
                        description="pass@k on HumanEval with forwards/sample, tokens/forward and tokens/s")
    he.add_argument("--checkpoint", metavar="DIR", help="model checkpoint directory")
    he.add_argument("--out", metavar="DIR", required=True, help="writes results.jsonl and summary.json here")
    he.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples per problem (default 1)")
    he.add_argument("--k", type=_int_list, default=[1], metavar="K[,K...]", help="pass@k to report (default 1)")
    he.add_argument("--allow-code-execution", action="store_true",
                    help="required: accept that the model's code runs on this machine (in the sandbox)")
    he.add_argument("--limit", type=int, metavar="N", help="only the first N problems")
    he.add_argument("--batch-size", type=int, default=8, help="prompts per sampler call (default 8)")
    knobs = he.add_argument_group("sampler knobs (passed to the sampler; its defaults apply when unset)")
    knobs.add_argument("--max-new-tokens", type=int)
    knobs.add_argument("--block-size", type=int)
    knobs.add_argument("--strategy", help="commit rule of the sampler")
    knobs.add_argument("--steps-per-block", type=int)
    knobs.add_argument("--threshold", type=float)
    knobs.add_argument("--temperature", type=float)
    knobs.add_argument("--seed", type=int)
    knobs.add_argument("--stop-token", action="append", dest="stop_tokens", metavar="TOKEN",
                       help="token text or id ending a completion; repeatable (default: the "
                            "checkpoint's generation.stop_token_ids, else EOS)")
    knobs.add_argument("--ar-baseline", action="store_true", default=None,
                       help="decode one token per forward with the KV cache (the model's AR baseline, "
                            "as bench-sampler measures it) instead of the block sampler")
    sandbox = he.add_argument_group("sandbox")
    sandbox.add_argument("--timeout-s", type=float, default=10.0, help="wall-clock limit per check (default 10)")
    sandbox.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="checks at once (default: cores)")
    sandbox.add_argument("--isolation", default="auto", choices=ISOLATION_MODES,
                         help="sandbox mode (default auto: the strongest that works; docs/evaluation.md)")
    he.add_argument("--canonical", action="store_true", help=argparse.SUPPRESS)

    infill = sub.add_parser("infill", help="held-out infilling accuracy / ELBO at several mask rates",
                            description="held-out infilling accuracy / ELBO at several mask rates")
    infill.add_argument("--checkpoint", metavar="DIR", required=True, help="model checkpoint directory")
    infill.add_argument("--data", metavar="FILE_OR_STORE", required=True, help="held-out jsonl file or token store")
    infill.add_argument("--mask-rates", type=_rate_list, default=_rate_list(DEFAULT_MASK_RATES),
                        metavar="R[,R...]", help=f"fractions of tokens masked (default {DEFAULT_MASK_RATES})")
    infill.add_argument("--out", metavar="DIR", required=True, help="output directory")
    _add_quality(sub)


def run(args: argparse.Namespace) -> int:
    if args.task == "infill":
        try:
            from megatron_diffusion.evaluation.infill import run_infill
        except ModuleNotFoundError as e:
            if e.name != "megatron_diffusion.evaluation.infill":
                raise
            raise UsageError("infill: not available in this build (megatron_diffusion.evaluation.infill "
                             "is missing)") from None
        return run_infill(args)
    if args.task == "quality":
        from megatron_diffusion.evaluation.quality import run_quality

        return run_quality(args)
    return run_humaneval(args)


def run_humaneval(args: argparse.Namespace) -> int:
    from megatron_diffusion.evaluation.executor import ExecutorConfig, resolve_sandbox
    from megatron_diffusion.evaluation.humaneval import (
        NUM_PROBLEMS, HumanEvalConfig, canonical_completions, evaluate, load_problems,
    )

    cfg = HumanEvalConfig(
        ks=tuple(args.k), num_samples=args.num_samples, out_dir=args.out,
        executor=ExecutorConfig(timeout_s=args.timeout_s, workers=args.workers, isolation=args.isolation),
    )
    if args.num_samples < max(args.k):
        raise UsageError(f"--num-samples: got {args.num_samples}, expected >= {max(args.k)}, the largest --k "
                         "(pass@k needs at least k samples per problem)")
    try:
        cfg.validate()
    except UsageError as e:  # name the command-line option rather than the config field
        field_name, _, rest = str(e).partition(":")
        raise UsageError(f"--{field_name.replace('_', '-')}:{rest}") from None
    if args.limit is not None and not 1 <= args.limit <= NUM_PROBLEMS:
        raise UsageError(f"--limit: got {args.limit}, expected 1..{NUM_PROBLEMS}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: got {args.batch_size}, expected an integer >= 1")
    if not args.canonical:
        if args.checkpoint is None:
            raise UsageError("--checkpoint: required (the model to evaluate)")
        if not os.path.isdir(args.checkpoint):
            raise UsageError(f"--checkpoint: {args.checkpoint!r} is not a directory")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out: {args.out!r} exists and is not a directory")
    if not args.allow_code_execution:
        raise UsageError("--allow-code-execution: HumanEval runs the code the model writes on this machine; "
                         "pass --allow-code-execution to accept that risk (checks run sandboxed, "
                         "see docs/evaluation.md)")
    problems = load_problems(args.limit)
    resolve_sandbox(cfg.executor)  # fail before the (slow) model load if code cannot be contained
    if args.canonical:
        completions, seconds = canonical_completions(problems, args.num_samples), None
        cfg.decoding = {"source": "canonical solutions (harness self-check)"}
    else:
        completions, seconds, cfg.decoding = _sample(problems, args)
    _, summary = evaluate(problems, completions, cfg, generation_seconds=seconds)
    scores = ", ".join(f"{name} = {value:.4f}" for name, value in summary["pass_at_k"].items())
    print(f"humaneval: {scores} ({summary['num_problems']} problems x {summary['num_samples']} samples); "
          f"results in {args.out}")
    return 0


def _sample(problems: list[dict], args: argparse.Namespace):
    """Completions from the checkpoint's sampler: (per-task results, wall seconds, settings)."""
    from megatron_diffusion.loading.trained import load_sampler
    from megatron_diffusion.evaluation.generation import generate

    knobs = {name: getattr(args, name) for name in ("max_new_tokens", "block_size", "strategy",
                                                    "steps_per_block", "threshold", "temperature", "seed", "ar_baseline",
                                                    "stop_tokens")}
    sampler = load_sampler(args.checkpoint, **{k: v for k, v in knobs.items() if v is not None})
    prompts = [p["prompt"] for p in problems for _ in range(args.num_samples)]
    generated, seconds = generate(prompts, sampler.complete, args.batch_size)
    n = args.num_samples
    completions = {p["task_id"]: generated[i * n:(i + 1) * n] for i, p in enumerate(problems)}
    settings = {**dict(sampler.settings), "checkpoint": os.path.abspath(args.checkpoint),
                "batch_size": args.batch_size}
    return completions, seconds, settings
