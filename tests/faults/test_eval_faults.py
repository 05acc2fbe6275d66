"""The evaluator killed while its sandboxed checks run (``eval humaneval``'s executor).

Before the fix a check outlived an evaluator killed by SIGKILL, or by SIGTERM to its process
group: it slept on past its wall-clock limit (that limit is the evaluator's to enforce), and its
``md-eval-*`` work directory stayed in the temporary directory for good. Now the checks die with
the evaluator at once, a SIGTERM removes the work directories before the evaluator ends, and
the next run removes those that a SIGKILL left.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

from megatron_diffusion.evaluation.executor import run_checks
from tests.evaluation.sandbox_helpers import processes_named, sandbox_config
from tests.faults.conftest import wait_for
from tests.helpers import ROOT
from tests.training.conftest import env

CHECKS = 2
EVALUATOR = textwrap.dedent('''
    import sys
    from megatron_diffusion.evaluation.executor import ExecutorConfig, run_checks
    marker = sys.argv[1]
    program = (f"import ctypes, time\\nctypes.CDLL(None).prctl(15, {marker.encode()!r}, 0, 0, 0)\\n"
               f"print('started', {marker!r}, flush=True)\\ntime.sleep(300)\\n")
    run_checks([program] * int(sys.argv[2]), ExecutorConfig(timeout_s=300, workers=int(sys.argv[2])))
''')


def _work_dirs(marker: str) -> list[Path]:
    """The work directories of the checks that printed ``marker`` (their ``output`` file)."""
    found = []
    for base in Path(tempfile.gettempdir()).glob("md-eval-*"):
        try:
            if marker in (base / "output").read_text(errors="replace"):
                found.append(base)
        except OSError:
            continue  # another run's, being removed
    return found


@pytest.fixture
def evaluator():
    """Start an evaluator whose checks sleep for 300 s (in its own process group); yields
    ``(process, marker)`` once every check runs. Whatever a failed test leaves is removed."""
    sandbox_config()  # skips where this machine cannot sandbox
    marker = "mdk" + uuid.uuid4().hex[:12]  # the checks' process name (<= 15 characters)
    proc = subprocess.Popen([sys.executable, "-c", EVALUATOR, marker, str(CHECKS)], cwd=ROOT,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for(lambda: len(processes_named(marker)) == CHECKS and len(_work_dirs(marker)) == CHECKS,
                 timeout=120, what="the checks to start")
        yield proc, marker
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pid in processes_named(marker):  # checks that survived (the code before the fix)
            os.kill(pid, signal.SIGKILL)
        for base in _work_dirs(marker):
            shutil.rmtree(base, ignore_errors=True)


def test_checks_die_with_an_evaluator_killed_by_sigkill(evaluator):
    proc, marker = evaluator
    proc.kill()
    proc.wait()
    wait_for(lambda: not processes_named(marker), timeout=5, what="the checks to die with their evaluator")
    assert len(_work_dirs(marker)) == CHECKS  # nobody could remove them; the next run does
    assert [r.status for r in run_checks(["pass\n"], sandbox_config())] == ["passed"]
    assert not _work_dirs(marker)


def test_sigterm_to_the_evaluators_group_kills_its_checks_and_removes_their_dirs(evaluator):
    proc, marker = evaluator
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM, proc.stderr.read()[-3000:]
    wait_for(lambda: not processes_named(marker), timeout=5, what="the checks to die with their evaluator")
    assert not _work_dirs(marker)
    assert "Traceback" not in proc.stderr.read()
