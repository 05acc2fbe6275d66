"""The README's test command from a checkout under /tmp (a fresh clone there, as root).

In namespace mode the sandbox mounts a private tmpfs on /tmp, so victim files kept inside such
a checkout were invisible to the checks: ``rm -rf`` of a missing path exits 0 and the hostile
test read that as an escape. This runs that test from a copy of the working tree under /tmp.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.evaluation.sandbox_helpers import sandbox_config
from tests.helpers import ROOT

TEST = "tests/evaluation/test_sandbox_hostile.py::test_deleting_files_outside_the_work_dir_fails"


def test_sandbox_hostile_test_passes_from_a_checkout_under_tmp():
    from megatron_diffusion.evaluation.executor import resolve_sandbox

    if resolve_sandbox(sandbox_config()).mode != "namespace":
        pytest.skip("only namespace mode masks /tmp")
    copy = tempfile.mkdtemp(dir="/tmp", prefix="md-checkout-")
    try:
        skip = shutil.ignore_patterns("__pycache__", ".victim-*", "*.pyc")
        for name in ("megatron_diffusion", "tests"):
            shutil.copytree(ROOT / name, os.path.join(copy, name), ignore=skip)
        shutil.copy(ROOT / "pyproject.toml", copy)
        env = dict(os.environ, PYTHONPATH=copy)
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    finally:
        shutil.rmtree(copy, ignore_errors=True)
