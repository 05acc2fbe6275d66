"""tools/plot_onpolicy.py on a hand-written run: the per-step table, the eval table, the PNG."""

import json
import subprocess
import sys

from tests.helpers import ROOT


def test_tables_and_png(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "tokens_per_forward": 1.0 + s / 10, "steps_per_block": 4 - s / 10,
             "verifier": 0.5, "reward": -0.5, "kl": 0.01 * s, "loss": 0.1} for s in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev = tmp_path / "e.json"
    ev.write_text(json.dumps({"tokens_per_forward": 2.5, "steps_per_block": 1.6, "verifier": 0.25,
                              "distinct_tokens": 0.5, "trajectories": 16}))
    out = tmp_path / "p.png"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_onpolicy.py"), f"a run={run}",
                           "--eval", f"before={ev}", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| 2 | 1.2000 | 3.8000 | 0.5000 | -0.5000 | 0.0200 | 0.1000 |" in proc.stdout
    assert "| before | 2.5 | 1.6 | 0.25 | 0.5 | 16 |" in proc.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
