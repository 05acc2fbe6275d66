"""``tools/cp_bench.py`` runs both layouts and reports per-CP figures (a tiny row, one step)."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_cp_bench_reports_both_layouts(tmp_path):
    out = tmp_path / "cp.json"
    proc = subprocess.run([sys.executable, "tools/cp_bench.py", "--seq-len", "64", "--layers", "1",
                           "--hidden", "64", "--heads", "2", "--block-size", "8", "--repeats", "1",
                           "--steps", "1", "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model_tokens"] == 128 and set(result["by_cp"]) == {"1", "2"}
    for row in result["by_cp"].values():
        assert row["runs"] == 1 and row["step_s_median"] > 0
        assert row["peak_rss_mib_per_rank"] > row["step_peak_above_start_mib"] >= 0
