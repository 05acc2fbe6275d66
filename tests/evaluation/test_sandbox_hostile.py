"""Hostile snippets are contained: the acceptance list of the evaluation issue.

Each snippet is our own test code (never model output). Every test also checks that the parent
is fine afterwards (it can still start processes) and that nothing the snippet started survives.
The fork bombs were first run as a bounded fork loop (test_fork_limit_binds) with a process cap
of 12, so an uncontained bomb cannot happen here without that test failing first.
"""

import os
import shutil
import subprocess

import pytest

from megatron_diffusion.evaluation import executor
from megatron_diffusion.evaluation.executor import Sandbox, resolve_sandbox, run_checks, run_one
from tests.evaluation.sandbox_helpers import (
    new_marker, processes_named, processes_of_uids, sandbox_config, set_name_lines,
)

SMALL_CAP = 12  # RLIMIT_NPROC for the fork tests


def assert_parent_fine_and_nothing_left(cfg, marker=None):
    assert subprocess.run(["true"]).returncode == 0
    if marker is not None:
        assert processes_named(marker) == []
    if os.geteuid() == 0 and resolve_sandbox(cfg).mode != "process":
        assert processes_of_uids(cfg.sandbox_uid_base, cfg.workers) == []


def test_wrong_answer_fails():
    cfg = sandbox_config()
    program = "def add(a, b):\n    return a - b\n\ndef check(f):\n    assert f(2, 2) == 4\n\ncheck(add)\n"
    [result] = run_checks([program], cfg)
    assert result.status == "failed"


def test_infinite_loop_times_out_and_its_processes_are_gone():
    cfg = sandbox_config(timeout_s=2.0, cpu_s=30)
    marker = new_marker()
    # A child that leaves the session (escapes killpg) and sleeps; the parent spins.
    program = set_name_lines(marker) + (
        "import os, time\n"
        "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\n"
        "while True:\n    pass\n"
    )
    [result] = run_checks([program], cfg)
    assert result.status == "timeout" and "wall-clock" in result.detail
    assert_parent_fine_and_nothing_left(cfg, marker)


def test_fork_limit_binds():
    """A bounded fork loop (100 at most, children exit on their own): the cap must stop it."""
    cfg = sandbox_config(max_processes=SMALL_CAP, workers=1)
    marker = new_marker()
    program = set_name_lines(marker) + (
        "import os, time\nn = 0\n"
        "for _ in range(100):\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        time.sleep(5)\n        os._exit(0)\n"
        "    n += 1\n"
        "assert n < 100, 'no limit on processes'\n"
        "raise RuntimeError(f'forked {n}')\n"
    )
    [result] = run_checks([program], cfg)
    assert result.status == "error" and "forked" in result.detail, result.detail
    if os.geteuid() == 0 and resolve_sandbox(cfg).mode != "process":
        assert int(result.detail.split("forked ")[1].split()[0]) < SMALL_CAP
    assert_parent_fine_and_nothing_left(cfg, marker)


@pytest.mark.parametrize("body", [
    "while True:\n    os.fork()\n",  # dies on the first refused fork
    "os.setsid()\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",  # never stops
])
def test_fork_bomb_is_contained(body):
    cfg = sandbox_config(max_processes=SMALL_CAP, workers=1, timeout_s=2.0)
    marker = new_marker()
    [result] = run_checks([set_name_lines(marker) + "import os\n" + body], cfg)
    assert result.status in ("error", "timeout"), result
    assert_parent_fine_and_nothing_left(cfg, marker)


@pytest.mark.parametrize("program", [
    "x = bytearray(8 * 1024 ** 3)\n",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 ** 2))\n",
])
def test_memory_hog_is_contained(program):
    cfg = sandbox_config(memory_mb=256)
    [result] = run_checks([program], cfg)
    assert result.status == "error" and "MemoryError" in result.detail, result
    assert_parent_fine_and_nothing_left(cfg)


MASKED_IN_SANDBOX = ("/tmp", "/dev/shm")
"""Namespace mode mounts private tmpfs over these: a check cannot see what lies beneath."""


def _visible_to_checks(path: str) -> bool:
    path = os.path.realpath(path)
    return not any(path == m or path.startswith(m + "/") for m in MASKED_IN_SANDBOX)


def victim_parent() -> str:
    """Where victims go: beside this file, unless the checkout lives under /tmp (a fresh clone
    there): then a check would see no victim at all, and ``rm -rf`` of a path it cannot see
    succeeds without touching anything. Then /var/tmp or the home directory."""
    for candidate in (os.path.dirname(os.path.abspath(__file__)), "/var/tmp", os.path.expanduser("~")):
        if _visible_to_checks(candidate) and os.access(candidate, os.W_OK):
            return candidate
    pytest.skip("no writable directory outside /tmp and /dev/shm for the victim files")


@pytest.fixture
def victim_dir():
    """A directory outside any check's temp dir, on the real file system, that checks can see."""
    base = os.path.join(victim_parent(), f".victim-{new_marker()}")
    os.makedirs(os.path.join(base, "tree"))
    for name in ("file.txt", os.path.join("tree", "inner.txt")):
        with open(os.path.join(base, name), "w") as f:
            f.write("precious")
    yield base
    shutil.rmtree(base)


def test_deleting_files_outside_the_work_dir_fails(victim_dir):
    cfg = sandbox_config()
    victim_file = os.path.join(victim_dir, "file.txt")
    programs = [
        f"import os\nos.remove({victim_file!r})\n",
        f"import shutil\nshutil.rmtree({os.path.join(victim_dir, 'tree')!r})\n",
        f"open({victim_file!r}, 'w').write('overwritten')\n",
        f"import os\nos.rename({victim_file!r}, {victim_file + '.moved'!r})\n",
        "import subprocess\n"
        f"subprocess.run(['rm', '-rf', {victim_dir!r}], check=True)\n",
    ]
    # can a check see the victim at all? (the sandbox hides private ancestors such as a 0700
    # home directory that holds the interpreter, so a clone there puts the victim out of sight)
    probe = f"import os\nassert os.path.exists({victim_file!r})\n"
    *results, seen = run_checks(programs + [probe], cfg)
    # what matters: the victims are intact; and each attempt failed or could not see them
    with open(victim_file) as f:
        assert f.read() == "precious"
    with open(os.path.join(victim_dir, "tree", "inner.txt")) as f:
        assert f.read() == "precious"
    assert not os.path.exists(victim_file + ".moved")
    if seen.status == "passed":
        assert all(r.status == "error" for r in results), results


def test_network_connection_is_refused(capfd):
    cfg = sandbox_config()
    # Passes only if a connection is made: an isolated check must end in an error.
    program = "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=3).close()\n"
    [result] = run_checks([program], cfg)
    sandbox = resolve_sandbox(cfg)
    assert result.status == "error", result
    if sandbox.network_guard:
        assert "disabled in the evaluation sandbox" in result.detail
    else:
        assert "unreachable" in result.detail.lower(), result.detail


def test_python_guards_when_no_isolation_is_available(victim_dir):
    """The fallback guards themselves (forced here, since this machine may have namespaces)."""
    cfg = sandbox_config(workers=1)
    guarded = Sandbox("process", (), network_guard=True, file_guard=True)
    victim_file = os.path.join(victim_dir, "file.txt")
    net = run_one("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=3)\n", cfg, guarded, 0)
    assert net.status == "error" and "disabled in the evaluation sandbox" in net.detail
    for program in (f"import os\nos.unlink({victim_file!r})\n",
                    f"import shutil\nshutil.rmtree({victim_dir!r})\n",
                    f"open({victim_file!r}, 'a').write('x')\n"):
        result = run_one(program, cfg, guarded, 0)
        assert result.status == "error" and "blocked" in result.detail, result
    assert open(victim_file).read() == "precious"
    inside = "import os, shutil\nos.makedirs('d/e')\nopen('d/e/f', 'w').write('x')\nshutil.rmtree('d')\n"
    assert run_one(inside, cfg, guarded, 0).status == "passed"


def test_fallback_prints_a_loud_warning_once(monkeypatch, capfd):
    monkeypatch.setattr(executor, "_warned", set())
    executor._warn_about(Sandbox("process", (), network_guard=True, file_guard=True), root=False)
    executor._warn_about(Sandbox("process", (), network_guard=True, file_guard=True), root=False)
    err = capfd.readouterr().err
    assert err.count("only a Python-level socket guard") == 1
    assert err.count("NOT a sandbox") == 2  # one network warning, one files warning


SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


@pytest.mark.skipif(os.geteuid() != 0 or SYSTEM_PYTHON is None, reason="setuid mode needs root and /usr/bin/python3")
def test_setuid_mode_without_namespaces(victim_dir):
    """Root without namespaces (e.g. Docker without CAP_SYS_ADMIN): uid drop + limits + uid sweep."""
    cfg = sandbox_config(isolation="setuid", python=SYSTEM_PYTHON, workers=1, timeout_s=2.0,
                         max_processes=SMALL_CAP)
    marker = new_marker()
    victim_file = os.path.join(victim_dir, "file.txt")
    escape = set_name_lines(marker) + (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\n"
        "while True:\n    pass\n")
    bomb = "import os\nos.setsid()\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    results = run_checks(["assert 1 + 1 == 2\n", f"import os\nos.remove({victim_file!r})\n", escape, bomb], cfg)
    assert [r.status for r in results] == ["passed", "error", "timeout", "timeout"], results
    assert os.path.exists(victim_file)
    assert_parent_fine_and_nothing_left(cfg, marker)
