"""``onpolicy-prompts`` and ``onpolicy-eval`` as a user runs them (subprocess), and their
one-line refusals with nothing written."""

import json
import subprocess
import sys

import pytest

from megatron_diffusion.onpolicy.prompts import read_prompts
from tests.helpers import ROOT, make_checkpoint
from tests.training.conftest import env


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "megatron_diffusion.cli", *map(str, args)],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)


def test_onpolicy_prompts_humaneval_and_source(tmp_path):
    out = tmp_path / "he.jsonl"
    proc = _cli("onpolicy-prompts", "--humaneval", "--limit", 2, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert [r.task_id for r in read_prompts(out)] == ["HumanEval/0", "HumanEval/1"]
    src = tmp_path / "m.py"
    src.write_text('def f(x):\n    """Return x."""\n    return x\n')
    proc = _cli("onpolicy-prompts", "--source", src, "--out", tmp_path / "src.jsonl")
    assert proc.returncode == 0, proc.stderr
    assert read_prompts(tmp_path / "src.jsonl")[0].prompt == 'def f(x):\n    """Return x.\n'


@pytest.mark.parametrize("args, message", [
    (["--source", "missing.py"], "--source: missing.py is not a file"),
    (["--humaneval", "--limit", "0"], "--limit"),
])
def test_onpolicy_prompts_bad_input(tmp_path, args, message):
    out = tmp_path / "p.jsonl"
    proc = _cli("onpolicy-prompts", *args, "--out", out)
    assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt")
    make_checkpoint(run)
    prompts = run / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "def add(a, b):\n", "entry_point": "add",
                                   "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}) + "\n"
                       + json.dumps({"prompt": "import json\n"}) + "\n")
    return run, prompts


def test_onpolicy_eval_figures(checkpoint, tmp_path):
    run, prompts = checkpoint
    out = tmp_path / "eval.json"
    proc = _cli("onpolicy-eval", "--checkpoint", run, "--prompts", prompts, "--verifier", "model",
                "--reference", run, "--samples", 2, "--max-new-tokens", 8, "--strategy", "fixed",
                "--steps-per-block", 2, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fig = json.loads(out.read_text())
    assert fig["trajectories"] == 4 and fig["verifier_kind"] == "model"
    assert fig["tokens_per_forward"] == pytest.approx(2.0)  # 2 steps per 4-token block
    assert fig["steps_per_block"] == pytest.approx(2.0) and 0 < fig["verifier"] < 1
    assert json.loads(proc.stdout) == fig
    rows = fig["per_prompt"]
    assert [r["samples"] for r in rows] == [2, 2] and sum(r["tokens"] for r in rows) / 4 == \
        pytest.approx(fig["completion_tokens"])
    assert sum(r["score"] for r in rows) / 2 == pytest.approx(fig["verifier"])
    for name in ("verifier", "tokens_per_forward"):
        est = fig["intervals"][name]
        assert est["lo"] <= est["value"] <= est["hi"] and est["value"] == pytest.approx(fig[name])
    # the same run again, paired with the first: the same completions, every difference 0
    proc = _cli("onpolicy-eval", "--checkpoint", run, "--prompts", prompts, "--verifier", "model",
                "--reference", run, "--samples", 2, "--max-new-tokens", 8, "--strategy", "fixed",
                "--steps-per-block", 2, "--paired", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    paired = json.loads(proc.stdout)["paired"]
    assert paired["verifier"] == {"value": 0.0, "lo": 0.0, "hi": 0.0}
    assert paired["tokens_per_forward"]["value"] == 0.0


def test_onpolicy_eval_bad_input(checkpoint, tmp_path):
    run, prompts = checkpoint
    out = tmp_path / "eval.json"
    bad, other, hotter = tmp_path / "bad.json", tmp_path / "other.json", tmp_path / "hotter.json"
    bad.write_text('{"verifier": 0.5}')
    other.write_text(json.dumps({"per_prompt": [{"task_id": "x", "score": 1, "tokens": 4,
                                                 "forwards": 2}]}))
    rows = [{"task_id": r.task_id, "score": 1, "tokens": 4, "forwards": 2} for r in read_prompts(prompts)]
    hotter.write_text(json.dumps({"per_prompt": rows, "trajectories": 2, "settings": {
        "strategy": "threshold", "threshold": 0.9, "temperature": 1.0, "seed": 0, "max_new_tokens": 64}}))
    for args, message in [(["--verifier", "model"], "--reference"),
                          (["--verifier", "model", "--reference", tmp_path / "none"], "--reference"),
                          ([], "has no test"), (["--samples", "0"], "--samples"),
                          (["--verifier", "model", "--reference", run, "--paired", bad], "--paired"),
                          (["--verifier", "model", "--reference", run, "--paired", other],
                           "--paired: its prompts are not this run's"),
                          (["--verifier", "model", "--reference", run, "--paired", tmp_path / "no.json"],
                           "no.json does not exist"),
                          (["--verifier", "model", "--reference", run, "--paired", hotter],
                           "was sampled with other settings (temperature: 1.0 there, 0.0 here)")]:
        proc = _cli("onpolicy-eval", "--checkpoint", run, "--prompts", prompts, *args, "--out", out)
        assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr
        assert not out.exists()
    proc = _cli("onpolicy-eval", "--checkpoint", run, "--prompts", prompts, "--verifier", "model",
                "--reference", run, "--out", tmp_path / "missing" / "eval.json")
    assert proc.returncode == 2 and "--out" in proc.stderr.strip().splitlines()[-1], proc.stderr
