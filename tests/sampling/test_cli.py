"""The sample and bench-sampler commands, bad input, stop tokens (load_sampler's contract:
tests/loading/test_trained.py)."""

import json

import pytest

from megatron_diffusion.cli import main
from megatron_diffusion.masks.config import AttentionConfig
from tests.helpers import make_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    make_checkpoint(run_dir, attention=AttentionConfig(mode="block", block_size=4), num_layers=2)
    return run_dir  # a run directory: its latest checkpoint is used


def test_sample_writes_json_lines(checkpoint, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "def f(x):"}\n{"prompt": "class A:"}\n')
    out = tmp_path / "out.jsonl"
    rc = main(["sample", "--checkpoint", str(checkpoint), "--prompts", str(prompts),
               "--max-new-tokens", "6", "--block-size", "3", "--strategy", "fixed",
               "--steps-per-block", "2", "--out", str(out)])
    assert rc == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["prompt"] for x in lines] == ["def f(x):", "class A:"]
    for x in lines:
        assert set(x) == {"prompt", "completion", "num_forwards", "num_tokens", "seconds", "step_map",
                          "prompt_ids", "completion_ids"}
        assert len(x["step_map"]) == x["num_tokens"] and max(x["step_map"]) < x["num_forwards"]
        assert len(x["completion_ids"]) == x["num_tokens"]
    # the ids are what the model saw and wrote: they decode to the texts
    from megatron_diffusion.loading.trained import load_sampler

    tok = load_sampler(checkpoint).tokenizer
    for x in lines:
        assert tok.decode(x["prompt_ids"]) == x["prompt"]
        assert tok.decode(x["completion_ids"]).startswith(x["completion"])
        assert x["num_tokens"] <= 6 and x["num_forwards"] >= 1
    assert not list(tmp_path.glob("*.tmp"))


def test_bench_prints_one_json_object(checkpoint, capsys):
    rc = main(["bench-sampler", "--checkpoint", str(checkpoint), "--num-prompts", "3",
               "--prompt-len", "8", "--max-new-tokens", "8", "--batch-size", "2", "--json",
               "--ignore-eos"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip())
    for key in ("tokens_per_second", "tokens_per_forward", "num_forwards", "latency_p50",
                "latency_p90", "batch_size", "block_size", "strategy", "device"):
        assert key in result and key in result["ar_baseline"]
    assert result["num_tokens"] == result["ar_baseline"]["num_tokens"] == 24
    assert result["ar_baseline"]["tokens_per_forward"] == 1.0
    assert result["speedup_tokens_per_second"] > 0


def test_bench_sweep_writes_table_and_plot(checkpoint, tmp_path, capsys):
    rc = main(["bench-sampler", "--checkpoint", str(checkpoint), "--num-prompts", "2",
               "--prompt-len", "8", "--max-new-tokens", "8", "--sweep", "--sweep-block-sizes",
               "2,8", "--sweep-thresholds", "0.5,1.0", "--sweep-out", str(tmp_path / "sw")])
    assert rc == 0
    table = (tmp_path / "sw" / "sweep.md").read_text().splitlines()
    assert len(table) == 2 + 2 + 4  # header, reference and AR rows, 2 block sizes x 2 thresholds
    rows = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["label"] for r in rows[:2]] == ["reference", "AR"] and rows[0]["agreement"] == 1.0
    assert rows[0]["block_size"] == 4 and rows[0]["tokens_per_forward"] == 1.0
    assert all(0 <= r["agreement"] <= 1 and r["nll"] > 0 for r in rows)
    assert (tmp_path / "sw" / "sweep.png").stat().st_size > 1000


@pytest.mark.parametrize("extra,message", [
    (["--block-size", "0"], "--block-size"),
    (["--threshold", "1.5"], "--threshold"),
    (["--threshold", "0"], "--threshold"),
    (["--steps-per-block", "0"], "--steps-per-block"),
    (["--strategy", "greedy"], "--strategy"),
    (["--prompt", "x = 1 " * 400], "longer than the context"),
    (["--prompt", ""], "empty"),
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--stop-token", "<|not a token|>"], "--stop-token"),
    (["--revisit-window", "1"], "needs --self-correct"),
    (["--self-correct", "--revisit-window", "9"], "at most the block size"),
])
def test_bad_input_is_one_line(checkpoint, capsys, extra, message):
    argv = ["sample", "--checkpoint", str(checkpoint), "--max-new-tokens", "4", *extra]
    if "--prompt" not in extra:
        argv += ["--prompt", "def f():"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_checkpoint_and_prompt_files(tmp_path, capsys):
    not_ckpt = tmp_path / "not_a_checkpoint"
    not_ckpt.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "meta.json").write_text('{"format": "hf-llama", "config": {}}')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    for argv, message in (
            (["--checkpoint", str(tmp_path / "missing"), "--prompt", "a"], "does not exist"),
            (["--checkpoint", str(not_ckpt), "--prompt", "a"], "not a megatron-diffusion"),
            (["--checkpoint", str(other), "--prompt", "a"], "format"),
            (["--checkpoint", str(other), "--prompts", str(empty)], "no prompts")):
        assert main(["sample", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_out_is_checked_before_decoding(checkpoint, tmp_path, capsys, monkeypatch):
    """A bad ``--out`` fails in one line before the model loads (it used to fail after the
    whole decode: a directory passed the parent-exists check)."""
    from megatron_diffusion.cli import sample as sample_cli

    def must_not_load(args):
        raise AssertionError("the model loaded before --out was checked")

    monkeypatch.setattr(sample_cli, "load_from_args", must_not_load)
    (tmp_path / "a_dir").mkdir()
    for out, message in ((tmp_path / "a_dir", "is a directory"),
                         (tmp_path / "missing" / "out.jsonl", "does not exist")):
        argv = ["sample", "--checkpoint", str(checkpoint), "--prompt", "a", "--out", str(out)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_stop_tokens_from_meta_and_flags(checkpoint):
    """Stop ids: the checkpoint's generation.stop_token_ids, else EOS; --stop-token (texts or
    ids) overrides; the sampler's settings record them."""
    from megatron_diffusion.loading.trained import load_sampler
    from megatron_diffusion.sampling.api import stop_token_ids

    sampler = load_sampler(checkpoint, max_new_tokens=4)
    tok = sampler.tokenizer
    assert sampler.settings["stop_token_ids"] == [tok.eos_id]  # no generation entry: EOS
    assert stop_token_ids(tok, (), {"generation": {"stop_token_ids": [7, 3]}}) == (7, 3)
    assert stop_token_ids(tok, ("[MASK]", "5", "5"), {"generation": {"stop_token_ids": [7]}}) \
        == (tok.mask_id, 5)
    flagged = load_sampler(checkpoint, max_new_tokens=4, stop_tokens=("11", "12"))
    assert flagged.settings["stop_token_ids"] == [11, 12]
    assert flagged.core.rules.stops == (11, 12)


def test_a_checkpoint_load_prints_no_third_party_warning(checkpoint):
    """Every load went through megatron-core's dist_checkpointing and printed torch's three
    FutureWarnings (load_state_dict, ShardedTensor) to a user's terminal;
    the CLI silences the known third-party warnings, its own stay."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run([sys.executable, "-m", "megatron_diffusion.cli", "sample", "--checkpoint",
                           str(checkpoint), "--prompt", "def f(x):", "--max-new-tokens", "4"],
                          cwd=ROOT, env=dict(env, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]
