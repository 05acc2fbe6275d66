"""``megatron-diffusion eval``: bad input is one line + exit 2; the pipeline runs end to end."""

import json
import os
import sys
import types

import pytest

from megatron_diffusion.cli import main
from megatron_diffusion.sampling.result import GenerationResult


def run_cli(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse errors exit from inside parse_args
        return e.code


@pytest.mark.parametrize("extra,message", [
    (["--canonical"], "--allow-code-execution: HumanEval runs the code the model writes"),
    (["--allow-code-execution"], "--checkpoint: required"),
    (["--allow-code-execution", "--checkpoint", "/nonexistent/ckpt"], "--checkpoint: '/nonexistent/ckpt' is not a directory"),
    (["--canonical", "--allow-code-execution", "--num-samples", "2", "--k", "1,10"], "--num-samples: got 2, expected >= 10"),
    (["--canonical", "--allow-code-execution", "--limit", "0"], "--limit: got 0"),
    (["--canonical", "--allow-code-execution", "--timeout-s", "0"], "--timeout-s: got 0.0"),
    (["--canonical", "--allow-code-execution", "--k", "one"], "argument --k: expected comma-separated integers"),
    (["--canonical", "--allow-code-execution", "--isolation", "docker"], "argument --isolation: invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert run_cli(["eval", "humaneval", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()  # nothing written on bad input


def test_canonical_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["eval", "humaneval", "--canonical", "--allow-code-execution", "--limit", "5",
                    "--workers", "2", "--out", str(out)]) == 0
    assert "pass@1 = 1.0000 (5 problems x 1 samples)" in capsys.readouterr().out
    results = [json.loads(line) for line in open(out / "results.jsonl")]
    summary = json.load(open(out / "summary.json"))
    assert [r["task_id"] for r in results] == [f"HumanEval/{i}" for i in range(5)]
    assert all(r["status"] == "passed" for r in results)
    assert summary["pass_at_k"]["pass@1"] == 1.0 and summary["num_problems"] == 5
    assert summary["sandbox"]["mode"] in ("namespace", "setuid", "process")


class FakeSampler:
    """Answers every prompt with ``return None`` except HumanEval/0 (its reference body)."""

    def __init__(self, checkpoint, **knobs):
        self.settings = {"block_size": 32, "strategy": "threshold", **knobs}
        self.calls = []

    def complete(self, prompts):
        from megatron_diffusion.evaluation.humaneval import load_problems

        right = load_problems(1)[0]
        self.calls.append(len(prompts))
        return [GenerationResult(right["canonical_solution"] if p == right["prompt"] else "    return None\n",
                                 num_forwards=2, num_tokens=8, seconds=0.25) for p in prompts]


def test_model_path_with_a_fake_sampler(tmp_path, monkeypatch, capsys):
    made = {}

    def load_sampler(checkpoint, **knobs):
        made["sampler"] = FakeSampler(checkpoint, **knobs)
        made["checkpoint"] = checkpoint
        return made["sampler"]

    monkeypatch.setitem(sys.modules, "megatron_diffusion.loading.trained",
                        types.SimpleNamespace(load_sampler=load_sampler))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    out = tmp_path / "out"
    argv = ["eval", "humaneval", "--checkpoint", str(ckpt), "--allow-code-execution", "--limit", "3",
            "--num-samples", "2", "--k", "1,2", "--batch-size", "4", "--threshold", "0.8", "--workers", "2",
            "--out", str(out)]
    assert run_cli(argv) == 0
    assert made["checkpoint"] == str(ckpt) and made["sampler"].calls == [4, 2]
    summary = json.load(open(out / "summary.json"))
    assert summary["pass_at_k"] == {"pass@1": pytest.approx(1 / 3), "pass@2": pytest.approx(1 / 3)}
    assert summary["decoding"]["threshold"] == 0.8 and summary["decoding"]["strategy"] == "threshold"
    assert summary["decoding"]["batch_size"] == 4
    assert "temperature" not in summary["decoding"]  # unset knobs: the sampler's defaults apply
    assert summary["speed"]["tokens_per_forward"] == 4 and summary["speed"]["tokens_per_second"] == 32


def test_ar_baseline_reaches_the_sampler(tmp_path, monkeypatch):
    made = {}

    def load_sampler(checkpoint, **knobs):
        made["knobs"] = knobs
        return FakeSampler(checkpoint, **knobs)

    monkeypatch.setitem(sys.modules, "megatron_diffusion.loading.trained",
                        types.SimpleNamespace(load_sampler=load_sampler))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    argv = ["eval", "humaneval", "--checkpoint", str(ckpt), "--allow-code-execution", "--limit", "1",
            "--workers", "1", "--out", str(tmp_path / "out")]
    assert run_cli(argv + ["--ar-baseline"]) == 0
    assert made["knobs"] == {"ar_baseline": True}
    assert json.load(open(tmp_path / "out" / "summary.json"))["decoding"]["ar_baseline"] is True
    assert run_cli(argv) == 0
    assert made["knobs"] == {}  # not given: the block sampler, the sampler's own default


def test_infill_arguments_reach_run_infill(tmp_path, monkeypatch):
    seen = {}

    def run_infill(args):
        seen["args"] = args
        return 0

    monkeypatch.setitem(sys.modules, "megatron_diffusion.evaluation.infill", types.SimpleNamespace(run_infill=run_infill))
    assert run_cli(["eval", "infill", "--checkpoint", "c", "--data", "d.jsonl", "--out", "o"]) == 0
    assert seen["args"].mask_rates == [0.15, 0.3, 0.5, 0.7, 0.9] and seen["args"].data == "d.jsonl"


def test_infill_bad_input(tmp_path, monkeypatch, capsys):
    assert run_cli(["eval", "infill", "--checkpoint", "c", "--data", "d", "--out", "o", "--mask-rates", "0.5,1"]) == 2
    assert "--mask-rates: expected mask rates strictly between 0 and 1" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "megatron_diffusion.evaluation.infill", None)  # as if not built
    assert run_cli(["eval", "infill", "--checkpoint", "c", "--data", "d", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "infill: not available" in err
    assert not os.path.exists("o")
