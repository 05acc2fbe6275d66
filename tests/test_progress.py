"""Progress: a bar on a terminal, plain lines in a batch log."""

import io
import os
import subprocess
import sys

from megatron_diffusion.progress import Progress, track
from tests.helpers import ROOT


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_batch_log_gets_a_line_per_tenth_and_one_at_the_end():
    log = io.StringIO()
    with Progress(25, "eval quality: AR baseline", unit="line", stream=log) as bar:
        for _ in range(25):
            bar.update()
    lines = log.getvalue().splitlines()
    assert lines[0] == "[eval quality: AR baseline] 0/25 lines (0%), 0 s"
    assert lines[-1] == "[eval quality: AR baseline] 25/25 lines (100%), 0 s"
    assert len(lines) == 11 and "\r" not in log.getvalue()
    assert all("ETA" in line for line in lines[1:-1])


def test_a_long_step_prints_after_the_interval_even_within_a_tenth():
    log = io.StringIO()
    bar = Progress(1000, "distill", unit="row", stream=log, interval_s=0.0)
    bar.update()
    bar.update()
    assert log.getvalue().splitlines()[1:] == ["[distill] 1/1000 rows (0%), 0 s, ETA 0:00:00",
                                               "[distill] 2/1000 rows (0%), 0 s, ETA 0:00:00"]


def test_unknown_total_and_figures_after_the_count():
    log = io.StringIO()
    with Progress(None, "preprocess s.zarr", unit="doc", stream=log, interval_s=0.0) as bar:
        bar.update(3)
        bar.set_postfix(tokens=1200)
        bar.update(2)
    assert log.getvalue().splitlines() == ["[preprocess s.zarr] 0 docs, 0 s",
                                           "[preprocess s.zarr] 3 docs, 0 s",
                                           "[preprocess s.zarr] 5 docs, 0 s, tokens 1200"]


def test_a_terminal_gets_the_bar_and_no_plain_lines():
    term = Terminal()
    with Progress(4, "sampling", unit="sample", stream=term) as bar:
        bar.update(4)
    out = term.getvalue()
    assert "sampling: 100%" in out and "4/4" in out and "[sampling]" not in out


def test_disabled_is_silent(capsys):
    log = io.StringIO()
    with Progress(4, "sweep", stream=log, enabled=False) as bar:
        bar.update(4)
    assert list(track(range(3), "sweep", enabled=False)) == [0, 1, 2]
    assert log.getvalue() == "" and capsys.readouterr().err == ""


def test_a_command_in_a_batch_job_prints_plain_progress_lines(tmp_path):
    """train-tokenizer with stderr a pipe (a SLURM log): plain lines, no carriage returns."""
    import sysconfig

    lib = os.path.join(sysconfig.get_paths()["stdlib"], "json")
    proc = subprocess.run([sys.executable, "-m", "megatron_diffusion.cli", "train-tokenizer",
                           "--input", lib, "--glob", "*.py", "--vocab-size", "300",
                           "--output", str(tmp_path / "tok.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[train-tokenizer]")]
    num_files = len([f for f in os.listdir(lib) if f.endswith(".py")])
    assert lines[0] == "[train-tokenizer] 0 files, 0 s"
    assert lines[-1].startswith(f"[train-tokenizer] {num_files} files, ")
    assert "\r" not in proc.stderr
