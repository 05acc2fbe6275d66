"""``megatron-diffusion onpolicy-eval``: the on-policy run's figures for a checkpoint, no training.

Samples ``--samples`` completions of every prompt of ``--prompts`` (each filled on the left to
whole blocks, as the on-policy run does) with the given sampler settings, scores them with the
verifier and prints one JSON object: ``tokens_per_forward``, ``steps_per_block``, ``verifier`` (mean
score; the pass rate with ``--verifier execution``), ``reward`` (``RewardConfig``'s defaults),
``surrogate``, ``completion_tokens``, ``distinct_tokens`` (``onpolicy/rollout.py``), the
settings, ``per_prompt`` records and 95% bootstrap ``intervals`` over prompts
(``onpolicy/intervals.py``). Run it on the model before and after training with the same settings;
``--paired BEFORE.json`` adds the paired interval of the differences (docs/onpolicy.md). Bad
input is one line and exit 2 before any model loads; ``--out`` is written atomically.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from megatron_diffusion.errors import UsageError, check_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint, run directory or HF export")
    p.add_argument("--prompts", required=True, help="prompt set (JSON lines, docs/onpolicy.md)")
    p.add_argument("--verifier", choices=("execution", "model"), default="execution")
    p.add_argument("--reference", default=None,
                   help="--verifier model: the frozen reference checkpoint (the starting model)")
    p.add_argument("--samples", type=int, default=1, help="completions per prompt")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--strategy", choices=("threshold", "fixed"), default="threshold")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--steps-per-block", type=int, default=None)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: greedy (deployment); 1: as the on-policy run samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="prompts decoded together")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--paired", default=None, metavar="BASE_JSON",
                   help="an onpolicy-eval --out of the same prompts: add this run minus that one")


def _check(args):
    """Everything that needs no model; returns the prompt records."""
    from megatron_diffusion.onpolicy.prompts import read_prompts

    check_int("--samples", args.samples, lo=1)
    check_int("--batch-size", args.batch_size, lo=1)
    if args.limit is not None:
        check_int("--limit", args.limit, lo=1)
    if args.verifier == "model" and args.reference is None:
        raise UsageError("--reference: --verifier model needs the reference checkpoint")
    if args.out is not None and not Path(args.out).resolve().parent.is_dir():
        raise UsageError(f"--out: the directory of {args.out} does not exist")
    records = read_prompts(args.prompts)[:args.limit]
    args.base = None if args.paired is None else _base_run(args.paired)
    args.base_rows = None if args.base is None else _base_rows(args.base, args.paired)
    if args.base_rows is not None:
        from megatron_diffusion.onpolicy.intervals import check_same_prompts
        check_same_prompts([r.task_id for r in records], args.base_rows)
    if args.verifier == "execution":
        untested = [r.task_id for r in records if not r.has_test]
        if untested:
            raise UsageError(f"--prompts: {untested[0]} has no test; --verifier execution needs "
                             "one per prompt (or use --verifier model)")
    return records


def _base_run(path: str) -> dict:
    """An earlier ``onpolicy-eval --out``, read."""
    if not Path(path).is_file():
        raise UsageError(f"--paired: {path} does not exist")
    try:
        base = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--paired: {path} is not JSON ({e})") from None
    if not isinstance(base, dict) or "per_prompt" not in base:
        raise UsageError(f"--paired: {path} is not an onpolicy-eval --out (no per_prompt records)")
    return base


def _base_rows(base: dict, path: str) -> list[dict]:
    """The ``per_prompt`` records of an earlier ``onpolicy-eval --out`` (``base``, read from ``path``)."""
    rows = base["per_prompt"]
    if not isinstance(rows, list) or not rows:
        raise UsageError(f"--paired: {path} has no per_prompt records")
    for i, row in enumerate(rows):
        fields = (row.get("task_id"), row.get("score"), row.get("tokens"), row.get("forwards")) \
            if isinstance(row, dict) else ()
        if len(fields) != 4 or not isinstance(fields[0], str) \
                or not all(isinstance(v, (int, float)) for v in fields[1:]) or not fields[3] > 0:
            raise UsageError(f"--paired: {path}: per_prompt[{i}] is not a record with task_id, "
                             "score, tokens and forwards > 0")
    return rows


def run(args) -> int:
    records = _check(args)
    from megatron_diffusion.loading.trained import load_model
    from megatron_diffusion.data.tokenizer import load_tokenizer
    from megatron_diffusion.fileio import write_text_atomic
    from megatron_diffusion.onpolicy import rollout
    from megatron_diffusion.onpolicy.objective import RewardConfig
    from megatron_diffusion.onpolicy.rows import fill_prompt
    from megatron_diffusion.onpolicy.verifiers import ExecutionVerifier, ModelVerifier
    from megatron_diffusion.sampling.api import stop_token_ids
    from megatron_diffusion.sampling.config import SamplerConfig
    from megatron_diffusion.sampling.sampler import ModelRules
    from megatron_diffusion.training.checkpoint import resolve_checkpoint

    cfg = SamplerConfig(max_new_tokens=args.max_new_tokens, strategy=args.strategy,
                        threshold=args.threshold, steps_per_block=args.steps_per_block,
                        temperature=args.temperature, seed=args.seed).validate()
    if args.paired is not None:
        _check_same_settings(args, cfg)
    if args.reference is not None:
        resolve_checkpoint(args.reference, option="--reference")  # before any model loads
    loaded = load_model(args.checkpoint)
    if loaded.tokenizer_path is None:
        raise UsageError(f"--checkpoint: {loaded.path} has no tokenizer.json")
    if loaded.config.attention.mode != "block":
        raise UsageError(f"--checkpoint: the on-policy figures are those of a block-diffusion "
                         f"model, got attention.mode={loaded.config.attention.mode!r}")
    tok = load_tokenizer(loaded.tokenizer_path)
    B = loaded.config.attention.block_size
    rules = ModelRules.from_run_config(loaded.config, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                       stop_ids=stop_token_ids(tok, (), loaded.meta))
    verifier = (ModelVerifier.from_checkpoint(args.reference) if args.verifier == "model"
                else ExecutionVerifier())
    task_ids = [r.task_id for r in records]
    records = [r for r in records for _ in range(args.samples)]
    prompts = [fill_prompt(tok.encode(r.prompt), B, tok.eos_id) for r in records]
    totals, every, t0 = None, ([], [], []), time.perf_counter()
    for i in range(0, len(prompts), args.batch_size):
        batch = prompts[i:i + args.batch_size]
        completions = rollout.sample(loaded.model, rules, cfg, batch)
        scores = rollout.score(verifier, records[i:i + args.batch_size], batch, completions, tok)
        part = rollout.sums(completions, scores, rollout.rewards(completions, scores, RewardConfig()), B)
        totals = part if totals is None else totals + part
        every[0].extend(scores.tolist())
        every[1].extend(len(c.tokens) for c in completions)
        every[2].extend(c.num_forwards for c in completions)
        print(f"onpolicy-eval: {min(i + args.batch_size, len(prompts))}/{len(prompts)} completions",
              file=sys.stderr, flush=True)
    out = {**rollout.figures(totals), "trajectories": len(prompts), "seconds": time.perf_counter() - t0,
           "checkpoint": str(loaded.path), "verifier_kind": args.verifier,
           "settings": cfg.resolve("block", B).settings()}
    out.update(_with_intervals(task_ids, every, args.base_rows))
    text = json.dumps(out, indent=1)
    print(text, flush=True)  # first: a failing --out write loses nothing
    if args.out:
        write_text_atomic(args.out, text + "\n")
    return 0


PAIRED_SETTINGS = ("strategy", "threshold", "temperature", "seed", "max_new_tokens")
"""Sampler settings two paired runs must share (``steps_per_block`` too when given); the others
are resolved from the checkpoint (block size) or not set by ``onpolicy-eval``."""


def _check_same_settings(args, cfg) -> None:
    """The paired run must have decoded the same way, except for what a comparison varies: the
    training between them changes the checkpoint, so only the sampler settings and the sample
    count must agree."""
    base = args.base
    keys = [*PAIRED_SETTINGS, *(["steps_per_block"] if cfg.steps_per_block is not None else [])]
    mine = {k: v for k, v in cfg.settings().items() if k in keys}
    theirs = {k: base.get("settings", {}).get(k) for k in mine}
    differ = sorted(k for k in mine if mine[k] != theirs[k])
    if base.get("trajectories") != len(args.base_rows) * args.samples:
        differ.append("samples")
    if differ:
        k = differ[0]
        raise UsageError(f"--paired: {args.paired} was sampled with other settings ({', '.join(differ)}"
                         f"{'' if k == 'samples' else f': {theirs[k]!r} there, {mine[k]!r} here'}); "
                         "compare runs of the same sampler settings")


def _with_intervals(task_ids: list[str], every: tuple, base_rows: list[dict] | None) -> dict:
    from megatron_diffusion.onpolicy import intervals

    rows = intervals.per_prompt(task_ids, *every)
    out = {"intervals": intervals.intervals(rows), "per_prompt": rows}
    if base_rows is not None:
        out["paired"] = intervals.paired(rows, base_rows)
    return out
