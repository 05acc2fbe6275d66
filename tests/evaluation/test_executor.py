"""The executor's verdicts and limits on ordinary (non-hostile) programs."""

import pytest

from megatron_diffusion.errors import UsageError
from megatron_diffusion.evaluation.executor import ExecutorConfig, run_checks
from tests.evaluation.sandbox_helpers import sandbox_config


@pytest.mark.parametrize("field,value", [
    ("timeout_s", 0), ("memory_mb", 0), ("cpu_s", -1), ("workers", 0), ("max_processes", 1.5),
    ("isolation", "docker"), ("sandbox_uid_base", 0), ("python", "/nonexistent/python"),
])
def test_config_validate_names_the_field(field, value):
    with pytest.raises(UsageError, match=field):
        ExecutorConfig(**{field: value}).validate()


def test_verdicts_in_order():
    cfg = sandbox_config()
    programs = [
        "def f(x):\n    return x + 1\nassert f(1) == 2\n",
        "def f(x):\n    return x\nassert f(1) == 2, 'wrong'\n",
        "raise ValueError('boom')\n",
        "def f(:\n",
        "import sys\nsys.exit(0)\n",
        "import os\nos._exit(0)\n",
        "print('hello')\n",
    ]
    results = run_checks(programs, cfg)
    assert [r.status for r in results] == ["passed", "failed", "error", "error", "error", "error", "passed"]
    assert "AssertionError: wrong" in results[1].detail and "line 3" in results[1].detail
    assert "ValueError: boom" in results[2].detail
    assert "SyntaxError" in results[3].detail
    assert "SystemExit" in results[4].detail  # leaving early is not passing
    assert "before the tests finished" in results[5].detail
    assert all(r.seconds > 0 for r in results)


def test_cpu_limit_is_a_timeout():
    cfg = sandbox_config(cpu_s=1, timeout_s=20.0)
    [result] = run_checks(["while True:\n    pass\n"], cfg)
    assert result.status == "timeout"
    assert "CPU time limit" in result.detail


def test_file_size_limit():
    cfg = sandbox_config(file_size_mb=1)
    program = "with open('big', 'wb') as f:\n    f.write(b'x' * (2 * 1024 * 1024))\n"
    [result] = run_checks([program], cfg)
    assert result.status == "error"
    assert "SIGXFSZ" in result.detail or "File too large" in result.detail


def test_open_files_limit():
    cfg = sandbox_config(open_files=16)
    [result] = run_checks(["fs = [open('f%d' % i, 'w') for i in range(64)]\n"], cfg)
    assert result.status == "error" and "Too many open files" in result.detail


def test_work_dir_is_writable_and_private_between_checks():
    cfg = sandbox_config(workers=1)
    write = "import os\nopen('left_behind', 'w').write('x')\nassert os.path.exists('left_behind')\n"
    read = "import os\nassert not os.path.exists('left_behind'), os.listdir('.')\n"
    assert [r.status for r in run_checks([write, read], cfg)] == ["passed", "passed"]


def test_environment_is_stripped(monkeypatch):
    monkeypatch.setenv("MD_EVAL_SECRET", "hunter2")
    cfg = sandbox_config()
    [result] = run_checks(["import os\nassert 'MD_EVAL_SECRET' not in os.environ\n"], cfg)
    assert result.status == "passed", result.detail
