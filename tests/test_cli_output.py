"""What the entry point does to third-party output: progress bars off in a batch log."""

import os
import subprocess
import sys

from tests.helpers import ROOT

_BARS = """
import sys
from megatron_diffusion.cli import quiet_third_party_bars
quiet_third_party_bars()
from tqdm import tqdm
from transformers.utils import logging
for _ in tqdm(range(3), desc="a third-party bar"):
    pass
print("hf bars on:", logging.is_progress_bar_enabled())
"""


def test_third_party_bars_are_off_when_stderr_is_a_file(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.run([sys.executable, "-c", _BARS], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=log, text=True, timeout=300)
    assert proc.returncode == 0, (tmp_path / "log").read_text()
    assert "a third-party bar" not in (tmp_path / "log").read_text()
    assert proc.stdout.strip() == "hf bars on: False"


def test_a_terminal_keeps_them(monkeypatch):
    from megatron_diffusion import cli

    class Tty:
        def isatty(self):
            return True

    for name in cli._BAR_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    cli.quiet_third_party_bars(Tty())
    assert not any(name in os.environ for name in cli._BAR_SWITCHES)
