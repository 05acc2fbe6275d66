"""Observability in batch jobs: without a terminal (a SLURM ``.out`` file) the tqdm bar prints
nothing, so the trainer prints one plain line per ``log_interval`` there."""

import io
import re

from megatron_diffusion.training.observability import RunLogger
from tests.faults.conftest import run_cli

LINE = re.compile(r"^iteration +(\d+)/ *(\d+) \| loss [\d.]+ \| lr [\d.e+-]+ \| grad norm [\d.]+ "
                  r"\| tokens/s \d+ \| step time [\d.]+ s \| ETA \d+:\d\d:\d\d")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _logger(tmp_path):
    return RunLogger(tmp_path, enabled=True, total_steps=10, start_step=0, wandb_mode="off",
                     wandb_project="x", config={}, tensorboard=False)


RECORD = {"step": 2, "loss": 3.25, "ce": 3.1, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 900.0,
          "step_time_s": 0.25, "stage": "mask", "u_max": 1.0}


def test_plain_line_when_stdout_is_not_a_terminal(tmp_path, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    log = _logger(tmp_path)
    log.log(RECORD)
    log.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and LINE.match(lines[0]), lines
    assert "iteration 2/10" in lines[0].replace("  ", " ")


def test_no_plain_line_on_a_terminal(tmp_path, monkeypatch):
    out = _Terminal()
    monkeypatch.setattr("sys.stdout", out)
    log = _logger(tmp_path)
    log.log(RECORD)
    log.close()
    assert "iteration" not in out.getvalue()


def test_training_prints_one_line_per_log_interval(tiny_store, tmp_path):
    proc = run_cli(tiny_store, tmp_path / "run", "training.train_iters=4", "training.log_interval=2")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("iteration")]
    assert [LINE.match(line).group(1, 2) for line in lines] == [("2", "4"), ("4", "4")], proc.stdout
