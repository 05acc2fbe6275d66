"""The GPU check's CPU dry run (tools/gpu_check.sh --dry-run), so the script cannot rot between GPU
runs, and its part runner: a failing or overrunning part is recorded and the next one runs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tools.gpu_check.report import PARTS, Context, Skip, run_part


def _dry_run(out: Path, *args, timeout=600, extra_env=None):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", **(extra_env or {}))
    return subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run", str(out),
                           *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("toy")
    subprocess.run([sys.executable, str(ROOT / "tools" / "sampler_toy_checkpoint.py"), str(run),
                    "--steps", "0"], cwd=ROOT, check=True, capture_output=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    return run


def _numbers(row: dict, *keys):
    for k in keys:
        assert isinstance(row[k], (int, float)) and row[k] == row[k], (k, row)


def _check_rows(part: dict, *keys):
    assert part["rows"], part
    for row in part["rows"]:
        if row["status"] == "ok":
            _numbers(row, *keys)
        else:
            assert row["reason"], row


@pytest.mark.slow
def test_dry_run_records_every_part_with_numbers_or_a_reason(tmp_path, toy_checkpoint):
    out = tmp_path / "results"
    proc = _dry_run(out, "--checkpoint", toy_checkpoint)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(PARTS) <= set(results)
    for name in PARTS:  # with a toy checkpoint every part runs on the CPU
        assert results[name]["status"] == "ok", (name, results[name])
    assert results["pytest_gpu"]["returncode"] == 0 and "skipped" in results["pytest_gpu"]["summary"]
    _numbers(results["ceilings"], "matmul_tflops", "copy_gb_per_s")
    _check_rows(results["train"], "tokens_per_s", "model_tokens_per_s", "achieved_tflops",
                "fraction_of_measured_matmul", "attended_pairs_per_row")
    assert {r["mode"] for r in results["train"]["rows"] if r["status"] == "ok"} == {"ar", "block"}
    _check_rows(results["attention"], "flex_fwd_ms", "sdpa_fwd_ms", "sdpa_expanded_kv_fwd_bwd_ms",
                "max_abs_diff_flex_vs_sdpa", "flex_tiles_computed_fraction")
    assert all(r["max_abs_diff_flex_vs_sdpa"] < 1e-4 for r in results["attention"]["rows"])
    sampler = results["sampler"]
    assert sampler["source"] == "checkpoint"
    _check_rows(sampler, "forwards_per_s", "tokens_per_second", "hbm_bound_measured",
                "fraction_of_hbm_bound")
    assert {r["name"].split("/")[0] for r in sampler["rows"] if r["status"] == "ok"} == {
        "ar_baseline", "block4_threshold0.9", "block4_fixed_1step", "speculative_d3", "hf_generate"}
    cpt = results["cpt"]
    assert cpt["metrics"] and cpt["before"]["infill"] and cpt["after"]["infill"]
    files = [p for p in out.rglob("*") if p.is_file()]  # what comes back from the device
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files)
    assert results["meta"]["parts"] == list(PARTS)
    assert "part env (cap" in (out / "gpu_check.log").read_text()


@pytest.mark.slow
def test_dry_run_sampler_converts_the_real_gguf(tmp_path):
    pytest.importorskip("gguf")
    from megatron_diffusion.convert.reference_model import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except Exception as e:
        pytest.skip(str(e))
    out = tmp_path / "results"
    proc = _dry_run(out, "--parts", "ceilings,sampler")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sampler = json.loads((out / "results.json").read_text())["sampler"]
    assert sampler["status"] == "ok" and sampler["source"] == "gguf", sampler
    assert sampler["weights"] == "pretrained"
    assert all(r["status"] == "ok" for r in sampler["rows"]), sampler["rows"]


@pytest.mark.slow
def test_dry_run_without_a_gguf_measures_random_weights_and_skips_the_cpt(tmp_path):
    out = tmp_path / "results"
    env = {"GPU_CHECK_GGUF": "none"}
    proc = _dry_run(out, "--parts", "sampler,cpt", extra_env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["sampler"]["weights"] == "random" and "none" in results["sampler"]["gguf_note"]
    assert all(r["status"] == "ok" for r in results["sampler"]["rows"]), results["sampler"]
    assert results["cpt"]["status"] == "skipped" and "random weights" in results["cpt"]["reason"]


def test_a_failing_or_overrunning_part_is_recorded_and_the_next_runs(tmp_path):
    ctx = Context(results_dir=tmp_path, dry_run=True, deadline=time.monotonic() + 60,
                  work_dir=tmp_path)

    def broken(ctx):
        ctx.partial["rows"] = [{"name": "first", "status": "ok"}]
        raise ValueError("boom")

    def stuck(ctx):
        while True:
            time.sleep(0.05)

    def rows(ctx):
        out: list = []
        ctx.guard(out, "fails", lambda: 1 / 0)
        ctx.guard(out, "skips", lambda: (_ for _ in ()).throw(Skip("not here")))
        ctx.guard(out, "late", lambda: {}, need_s=1e9)
        ctx.guard(out, "works", lambda: {"x": 1.0})
        return {"rows": out}

    run_part(ctx, "a", broken, cap_s=10)
    run_part(ctx, "b", stuck, cap_s=-4.9)  # alarm after cap + 5 s = 0.1 s
    run_part(ctx, "c", rows, cap_s=10)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["a"]["status"] == "failed" and saved["a"]["reason"] == "ValueError: boom"
    assert saved["a"]["rows"] == [{"name": "first", "status": "ok"}]  # partial figures kept
    assert saved["b"]["status"] == "failed" and "PartTimeout" in saved["b"]["reason"]
    assert [(r["name"], r["status"]) for r in saved["c"]["rows"]] == [
        ("fails", "failed"), ("skips", "skipped"), ("late", "skipped"), ("works", "ok")]
    assert saved["c"]["rows"][0]["reason"].startswith("ZeroDivisionError")
    ctx.deadline = time.monotonic() + 1
    assert run_part(ctx, "d", rows, cap_s=10)["status"] == "skipped"


def test_failing_gpu_tests_fail_the_part(tmp_path, monkeypatch):
    """``pytest -m gpu`` exiting non-zero (a failing GPU test, or no pytest at all) was recorded
    as status "ok" with its return code beside it; the summary table then said ok."""
    from tools.gpu_check import env as env_part

    def failing(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="F\n1 failed, 3 passed in 2.0s\n", stderr="")

    monkeypatch.setattr(env_part.subprocess, "run", failing)
    ctx = Context(results_dir=tmp_path, dry_run=True, deadline=time.monotonic() + 60, work_dir=tmp_path)
    result = run_part(ctx, "pytest_gpu", env_part.pytest_gpu_part, cap_s=30)
    assert result["status"] == "failed" and result["returncode"] == 1
    assert result["reason"] == "RuntimeError: pytest -m gpu: exit 1: 1 failed, 3 passed in 2.0s"


def test_a_missing_results_dir_is_one_line_and_exit_2():
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "RESULTS_DIR: missing" in proc.stderr
