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
    assert "ar ce" not in lines[0] and "mask cap" not in lines[0]  # no AR term, warmup over


def test_plain_line_says_why_a_diffusion_cpt_loss_rises(tmp_path, monkeypatch):
    """During the corruption warmup the loss climbs with the masking cap; with an AR term its CE
    is the figure that shows the AR model is kept: both are in the batch-log line."""
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    log = _logger(tmp_path)
    log.log({**RECORD, "ar_ce": 2.6411, "u_max": 0.35})
    log.close()
    line = out.getvalue().splitlines()[0]
    assert LINE.match(line) and line.endswith("| ar ce 2.6411 | mask cap 0.35")


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


def _resume_logger(run_dir, start_step):
    return RunLogger(run_dir, enabled=True, total_steps=10, start_step=start_step,
                     wandb_mode="off", wandb_project="x", config={}, tensorboard=False)


def test_resume_drops_a_torn_last_metrics_line(tmp_path, capsys):
    """An append torn by a full disk or a kill left half a record: a requeue's resume keeps the
    whole records up to its checkpoint and drops the torn one, with a warning naming it."""
    import json

    whole = [json.dumps({**RECORD, "step": s}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(whole) + '\n{"step": 4, "loss": 3.')
    _resume_logger(tmp_path, start_step=2)
    kept = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in kept] == [1, 2]
    assert "metrics.jsonl:4: dropped a torn metrics line" in capsys.readouterr().err


def test_metrics_append_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import pytest

    from megatron_diffusion.errors import UsageError

    logger = _resume_logger(tmp_path, start_step=0)
    real_open = type(logger.path).open

    def full(self, mode="r", *args, **kwargs):
        if "a" in mode:
            raise OSError(28, "No space left on device")
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(type(logger.path), "open", full)
    with pytest.raises(UsageError, match=r"cannot append the step 2 metrics \(No space left on "
                                         r"device\); the last checkpoint is kept"):
        logger.log(RECORD)
