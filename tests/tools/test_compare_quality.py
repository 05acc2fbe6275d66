"""tools/compare_quality.py on hand-written reports: paired differences, and its refusals."""

import json
import subprocess
import sys

from tests.helpers import ROOT


def _report(path, label, exact, tokens, forwards, lines=None):
    lines = lines or [("a.py", i) for i in range(len(exact))]
    records = [{"file": f, "line_number": n, "exact_match": e, "completion_ids": [0] * t,
                "num_forwards": w} for (f, n), e, t, w in zip(lines, exact, tokens, forwards)]
    decode = {"label": label, "records": records,
              "tokens_per_forward": {"value": sum(tokens) / sum(forwards)},
              "exact_match": {"value": sum(exact) / len(exact)}}
    path.write_text(json.dumps({"line_completion": {"decodes": [decode]}}))
    return path


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "compare_quality.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_paired_differences(tmp_path):
    before = _report(tmp_path / "b.json", "threshold 0.3", [1, 0, 0, 1], [4] * 4, [4] * 4)
    after = _report(tmp_path / "a.json", "threshold 0.3", [1, 0, 0, 1], [4] * 4, [2] * 4)
    proc = _run(before, after)
    assert proc.returncode == 0, proc.stderr
    # every line twice as fast: +1.00 on every resample; the same lines matched: exactly 0 points
    assert ("| threshold 0.3 | 1.00 -> 2.00 | +1.00 [+1.00, +1.00] | 50.0 -> 50.0 | "
            "+0.0 [+0.0, +0.0] |") in proc.stdout
    worse = _report(tmp_path / "w.json", "threshold 0.3", [0, 0, 0, 0], [4] * 4, [4] * 4)
    row = [r for r in _run(before, worse).stdout.splitlines() if r.startswith("| threshold")][0]
    assert "| 50.0 -> 0.0 | -50.0 [" in row


def test_refuses_other_lines_and_other_files(tmp_path):
    before = _report(tmp_path / "b.json", "AR baseline", [1, 0], [3, 3], [3, 3])
    other = _report(tmp_path / "o.json", "AR baseline", [1, 0], [3, 3], [3, 3],
                    lines=[("a.py", 0), ("b.py", 7)])
    proc = _run(before, other)
    assert proc.returncode == 2 and "holds other lines" in proc.stderr.strip().splitlines()[-1]
    (tmp_path / "x.json").write_text("{}")
    proc = _run(before, tmp_path / "x.json")
    assert proc.returncode == 2 and "not an eval quality --out" in proc.stderr
    proc = _run(before, _report(tmp_path / "l.json", "threshold 0.5", [1, 0], [3, 3], [3, 3]))
    assert proc.returncode == 2 and "share no decode label" in proc.stderr
    proc = _run(before, tmp_path / "missing.json")
    assert proc.returncode == 2 and proc.stderr.strip().endswith("missing.json does not exist")
    longer = _report(tmp_path / "m.json", "AR baseline", [1, 0], [3, 3], [3, 3])
    longer.write_text(longer.read_text()[:-1] + ', "settings": {"max_line_tokens": 8}}')
    proc = _run(before, longer)
    assert proc.returncode == 2 and "other settings (max_line_tokens None -> 8)" in proc.stderr
