"""HumanEval: the canonical solutions pass, completions are cut right, pass@k matches the formula."""

import json
import math
import os
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_diffusion.errors import UsageError
from megatron_diffusion.evaluation.generation import generate
from megatron_diffusion.evaluation.humaneval import (
    NUM_PROBLEMS, HumanEvalConfig, build_program, canonical_completions, evaluate, load_problems,
    pass_at_k, postprocess_completion,
)
from megatron_diffusion.sampling.result import GenerationResult
from tests.evaluation.sandbox_helpers import sandbox_config


@pytest.fixture(scope="module")
def problems():
    return load_problems()


def test_problems_load_offline_in_task_order(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("loading HumanEval must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    loaded = load_problems()
    assert len(loaded) == NUM_PROBLEMS
    assert [p["task_id"] for p in loaded[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert [p["task_id"] for p in load_problems(limit=2)] == ["HumanEval/0", "HumanEval/1"]
    with pytest.raises(UsageError, match="limit"):
        load_problems(limit=0)


def test_all_canonical_solutions_pass(problems, tmp_path):
    # Post-processing must leave every reference body intact, or the self-check would lie.
    assert all(postprocess_completion(p["canonical_solution"]) == p["canonical_solution"].rstrip()
               for p in problems)
    cfg = HumanEvalConfig(out_dir=str(tmp_path), executor=sandbox_config(workers=2, memory_mb=1024))
    start = time.monotonic()
    results, summary = evaluate(problems, canonical_completions(problems), cfg)
    seconds = time.monotonic() - start
    failures = [(r["task_id"], r["status"], r["detail"]) for r in results if not r["passed"]]
    assert failures == []
    assert summary["pass_at_k"] == {"pass@1": 1.0} and summary["status_counts"]["passed"] == NUM_PROBLEMS
    print(f"\n164 canonical checks on 2 workers: {seconds:.1f} s")


def test_wrong_completions_fail(problems):
    first = problems[:4]
    wrong = {p["task_id"]: [GenerationResult("    return None\n", 1, 1, 0.1)] for p in first}
    results, summary = evaluate(first, wrong, HumanEvalConfig(executor=sandbox_config()))
    assert all(r["status"] in ("failed", "error") for r in results), results
    assert summary["pass_at_k"]["pass@1"] == 0.0


BODY = "    return x + 1\n"


@pytest.mark.parametrize("tail", [
    "\ndef helper():\n    pass\n", "\nclass Foo:\n    pass\n", "\nif __name__ == '__main__':\n    f(1)\n",
    "\nprint(f(1))\n", "\n# test\nassert f(1) == 2\n", "\n@decorator\ndef g(): pass\n",
    "\n```\nSome explanation", "<|endoftext|>def junk(): pass", "</s>\nmore", "\nasync def g():\n    pass\n",
])
def test_postprocess_stops_at_a_new_top_level_statement(tail):
    assert postprocess_completion(BODY + tail) == BODY.rstrip()


@pytest.mark.parametrize("text", [
    "```python\ndef f(x):\n    return x + 1\n```\n", "def f(x):\n    return x + 1\n",
    "async def g():\n    pass\n", "# explanation\n    return x\n", "if True:\n    pass\n",
])
def test_postprocess_stops_at_the_very_start(text):
    # the prompt ends with a newline, so column 0 of the completion is a new top-level line
    assert postprocess_completion(text) == ""


def test_a_leading_fence_or_def_is_a_wrong_answer_not_an_error(problems):
    first = problems[0]
    texts = ["```python\n" + first["prompt"] + first["canonical_solution"] + "```\n",
             "def helper():\n    return 1\n"]
    completions = {first["task_id"]: [GenerationResult(t, 1, 1, 0.1) for t in texts]}
    results, _ = evaluate([first], completions,
                          HumanEvalConfig(num_samples=2, executor=sandbox_config()))
    assert [r["completion"] for r in results] == ["", ""]
    assert [r["status"] for r in results] == ["failed", "failed"], results


@pytest.mark.parametrize("text", [
    "    def inner(y):\n        return y\n    return inner(x)\n",  # nested def: indented, kept
    "    # a comment in the body\n    return x\n",
    "    if x:\n        print(x)\n    return x\n",
    "    return x\ndefault_value = 3\nif_ok = True\nprinter = None\n",  # names that only start with a keyword
])
def test_postprocess_keeps_the_body(text):
    assert postprocess_completion(text) == text.rstrip()


def test_build_program():
    problem = {"prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"}
    assert build_program(problem, BODY.rstrip()) == (
        "def f(x):\n    return x + 1\ndef check(c):\n    assert c(1) == 2\n\ncheck(f)\n")


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 1, 0.4), (5, 2, 2, 0.7), (5, 0, 3, 0.0), (5, 5, 1, 1.0), (10, 3, 5, 1 - 21 / 252), (3, 1, 3, 1.0),
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k([n], [c], k) == pytest.approx(expected)


def test_pass_at_k_is_a_mean_over_problems():
    assert pass_at_k([5, 5], [2, 5], 1) == pytest.approx((0.4 + 1.0) / 2)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_the_binomial_formula(nck):
    n, c, k = nck
    assert pass_at_k([n], [c], k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_evaluate_writes_results_and_summary_with_speed(problems, tmp_path):
    two = problems[:2]
    right = [p["canonical_solution"] for p in two]
    completions = {
        two[0]["task_id"]: [GenerationResult(right[0], 4, 16, 0.5), GenerationResult("    return None\n", 4, 16, 0.5)],
        two[1]["task_id"]: [GenerationResult(right[1] + "\nprint('x')\n", 4, 16, 0.5),
                            GenerationResult(right[1], 4, 16, 0.5)],
    }
    cfg = HumanEvalConfig(ks=(1, 2), num_samples=2, out_dir=str(tmp_path / "out"),
                          decoding={"block_size": 4, "threshold": 0.9}, executor=sandbox_config())
    results, summary = evaluate(two, completions, cfg, generation_seconds=2.5)
    assert summary["pass_at_k"] == {"pass@1": pytest.approx(0.75), "pass@2": 1.0}
    assert summary["speed"]["forwards_per_sample"] == 4
    assert summary["speed"]["tokens_per_forward"] == 4
    assert summary["speed"]["tokens_per_second"] == 32
    assert summary["speed"]["generation_wall_seconds"] == 2.5
    assert summary["decoding"] == {"block_size": 4, "threshold": 0.9}
    assert summary["status_counts"] == {"passed": 3, "failed": 1, "timeout": 0, "error": 0}
    assert sorted(os.listdir(tmp_path / "out")) == ["results.jsonl", "summary.json"]  # no temp files left
    lines = [json.loads(line) for line in open(tmp_path / "out" / "results.jsonl")]
    assert lines == results and len(lines) == 4
    assert lines[2]["completion"] == right[1].rstrip() and lines[2]["raw_completion"].endswith("print('x')\n")
    assert json.load(open(tmp_path / "out" / "summary.json")) == json.loads(json.dumps(summary))


def test_evaluate_rejects_missing_samples_and_bad_k(problems):
    with pytest.raises(UsageError, match="HumanEval/0 has 1 samples"):
        evaluate(problems[:1], canonical_completions(problems[:1], 1), HumanEvalConfig(num_samples=2, ks=(1,)))
    with pytest.raises(UsageError, match="problems"):
        evaluate([], {}, HumanEvalConfig())
    with pytest.raises(UsageError, match="num_samples"):
        HumanEvalConfig(ks=(1, 10), num_samples=5).validate()


def test_generate_batches_and_checks_the_completion_function():
    calls = []

    def complete(prompts):
        calls.append(len(prompts))
        return [GenerationResult(p.upper(), 1, 1, 0.0) for p in prompts]

    out, seconds = generate(["a", "b", "c", "d", "e"], complete, batch_size=2, progress=False)
    assert [r.text for r in out] == ["A", "B", "C", "D", "E"] and calls == [2, 2, 1] and seconds >= 0
    with pytest.raises(TypeError, match="one GenerationResult per prompt"):
        generate(["a", "b"], lambda prompts: [GenerationResult("x", 1, 1, 0.0)], batch_size=2, progress=False)
