"""Run untrusted programs (model-written code + unit tests), each in its own sandboxed process.

Execution-based benchmarks (HumanEval; Stable-DiffCoder and Seed Diffusion report pass@1 with
decoding speed) must run code a model wrote. Each check is one subprocess,
``python -I -S -B sandbox_child.py CONFIG`` with the program on stdin, in its own session, a
fresh temporary directory and a stripped environment, under resource limits. ``isolation``
picks how much more the machine allows: ``namespace`` (root with ``unshare``: no network,
read-only ``/``, an unused uid, the pid namespace torn down after the check), ``setuid`` (root
without namespaces: the unused uid, its processes swept after the check) or ``process`` (not
root: the caller's uid and Python-level guards, with a loud warning that they are not a
sandbox); ``auto`` picks the strongest whose probe passes. A check dies with its evaluator,
however the evaluator ends (a pipe whose write end only the evaluator holds), and a SIGTERM
removes the running checks' work directories first. docs/evaluation.md "The sandbox" states
what each mode does and does not guarantee.
"""

import fcntl
import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Self
from functools import lru_cache
from pathlib import Path
from queue import SimpleQueue

from megatron_diffusion.errors import UsageError, check_choice, check_int, check_range
from megatron_diffusion.fileio import owner_gone

ISOLATION_MODES = ("auto", "namespace", "setuid", "process")
STATUSES = ("passed", "failed", "timeout", "error")
CHILD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")
NAMESPACE_PREFIX = ("--net", "--mount", "--pid", "--ipc", "--fork", "--kill-child", "--mount-proc")
USERNS_PREFIX = ("--user", "--map-root-user", *NAMESPACE_PREFIX)
OUTPUT_TAIL_BYTES = 600
WORK_DIR_PREFIX = "md-eval-"
"""A check's work directory is ``TMPDIR/md-eval-PID-XXXXXXXX`` (PID: the evaluator's)."""


@dataclass
class ExecutorConfig:
    """Limits and isolation for running untrusted checks."""

    timeout_s: float = 10.0
    """Wall-clock limit per check, interpreter start-up included; on expiry the check's whole
    process group (and, in namespace mode, its pid namespace) is killed: status ``timeout``."""
    memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) of each process of a check; a hog gets MemoryError."""
    cpu_s: int = 10
    """CPU-time limit (RLIMIT_CPU) of each process of a check: status ``timeout``."""
    file_size_mb: int = 16
    """Largest file a check may write (RLIMIT_FSIZE); in namespace mode also the size of its
    private /tmp and /dev/shm."""
    open_files: int = 64
    """Open file descriptors per process (RLIMIT_NOFILE)."""
    max_processes: int = 32
    """Processes + threads of the check's uid (RLIMIT_NPROC): what stops a fork bomb. It binds
    only for a non-root uid, which is why root runs checks as a sandbox uid."""
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """Checks run at once (one subprocess each); default: the number of CPU cores."""
    isolation: str = "auto"
    """``auto`` (strongest that works), ``namespace``, ``setuid`` or ``process``; see the module
    docstring and docs/evaluation.md."""
    sandbox_uid_base: int = 65000
    """Root only: worker slot i runs its checks as uid and gid ``sandbox_uid_base + i``. These
    ids must belong to no user or group: their processes are killed after each check."""
    python: str = sys.executable
    """Interpreter that runs the checks (stdlib only is needed)."""

    def validate(self) -> Self:
        check_range("timeout_s", self.timeout_s, lo=0, lo_open=True)
        for name in ("memory_mb", "cpu_s", "file_size_mb", "open_files", "max_processes", "workers"):
            check_int(name, getattr(self, name), lo=1)
        check_choice("isolation", self.isolation, ISOLATION_MODES)
        base = self.sandbox_uid_base
        if not isinstance(base, int) or isinstance(base, bool) or base < 1000 or base + self.workers > 2**31:
            raise UsageError(f"sandbox_uid_base: got {self.sandbox_uid_base!r}, expected an int >= 1000 "
                             f"with sandbox_uid_base + workers - 1 < 2**31")
        if not (os.path.isfile(self.python) and os.access(self.python, os.X_OK)):
            raise UsageError(f"python: {self.python!r} is not an executable file")
        return self


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    status: str
    """``passed``, ``failed`` (an assertion failed), ``timeout`` (wall clock or CPU time) or
    ``error`` (any other exception, a crash, a limit, leaving before the tests finished)."""
    detail: str
    """Why, in one line: the exception and the failing program line, or the limit hit."""
    seconds: float
    """Wall-clock time of the check, sandbox start-up included."""


@dataclass(frozen=True)
class Sandbox:
    """The isolation resolved for this machine (see the module docstring)."""

    mode: str
    prefix: tuple[str, ...]
    network_guard: bool
    file_guard: bool

    def describe(self) -> dict:
        return {
            "mode": self.mode,
            "network": "python-guard (not a sandbox)" if self.network_guard else "network namespace",
            "files": "python-guard (not a sandbox)" if self.file_guard else "unprivileged uid, read-only /",
        }


_warned: set[str] = set()
_warn_lock = threading.Lock()


def _warn_once(key: str, text: str) -> None:
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    bar = "!" * 78
    print(f"{bar}\nWARNING (megatron-diffusion eval sandbox): {text}\n{bar}", file=sys.stderr, flush=True)


class _Terminated(BaseException):
    """SIGTERM arrived while checks ran (raised in the main thread by ``_terminate``)."""


def _terminate(signum, frame):
    raise _Terminated


class RunningChecks:
    """The process groups of the checks running now, so that a stopping evaluator can kill
    them; once stopped, a check that starts is killed at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pgids: set[int] = set()
        self.stopped = False

    def add(self, pgid: int) -> None:
        with self.lock:
            self.pgids.add(pgid)
            if self.stopped:
                _kill_group(pgid)

    def discard(self, pgid: int) -> None:
        with self.lock:
            self.pgids.discard(pgid)

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            for pgid in self.pgids:
                _kill_group(pgid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)  # namespace mode: unshare, whose --kill-child ends the rest
    except ProcessLookupError:
        pass


def run_checks(programs: list[str], cfg: ExecutorConfig, progress: bool = False) -> list[CheckResult]:
    """Run each program in its own sandboxed subprocess, ``cfg.workers`` at a time; in order.

    An exception here (Ctrl-C; SIGTERM where nobody else handles it) kills the running checks
    and starts no more; their work directories are removed before it propagates."""
    cfg.validate()
    remove_stale_work_dirs()
    sandbox = resolve_sandbox(cfg)
    slots: SimpleQueue[int] = SimpleQueue()
    for slot in range(cfg.workers):
        slots.put(slot)
    running = RunningChecks()

    def one(program: str) -> CheckResult:
        if running.stopped:
            return CheckResult("error", "not run: the evaluation was stopped", 0.0)
        slot = slots.get()
        try:
            return run_one(program, cfg, sandbox, slot, running=running)
        finally:
            slots.put(slot)

    from megatron_diffusion.progress import Progress

    # SIGTERM's default action would kill this process mid-check and leave the work dirs behind
    own_sigterm = (threading.current_thread() is threading.main_thread()
                   and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if own_sigterm:
        signal.signal(signal.SIGTERM, _terminate)
    pool = ThreadPoolExecutor(max_workers=cfg.workers)
    terminated = False
    try:
        results = []
        with Progress(len(programs), "checks", unit="check", enabled=progress) as bar:
            for result in pool.map(one, programs):
                results.append(result)
                bar.update()
        return results
    except BaseException as e:
        terminated = isinstance(e, _Terminated)
        if own_sigterm:  # a second SIGTERM must not cut the cleanup short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        running.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # the killed checks remove their dirs
        if own_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if terminated:
            os.kill(os.getpid(), signal.SIGTERM)  # the default action now, with its status


def remove_stale_work_dirs() -> None:
    """Delete the ``md-eval-PID-*`` work directories of evaluators that are gone (a SIGKILL
    leaves them: the cleanup never ran), as ``fileio.remove_stale_temporaries`` does."""
    for base in Path(tempfile.gettempdir()).glob(f"{WORK_DIR_PREFIX}*-*"):
        if owner_gone(base.name[len(WORK_DIR_PREFIX):].split("-", 1)[0]):
            shutil.rmtree(base, ignore_errors=True)


def resolve_sandbox(cfg: ExecutorConfig) -> Sandbox:
    """The strongest isolation ``cfg.isolation`` allows that passes a probe check (cached)."""
    return _resolve(cfg.isolation, cfg.python, cfg.sandbox_uid_base, cfg.workers)


@lru_cache(maxsize=None)
def _resolve(isolation: str, python: str, uid_base: int, workers: int) -> Sandbox:
    root = os.geteuid() == 0
    probe_cfg = ExecutorConfig(timeout_s=30.0, isolation=isolation, python=python,
                               sandbox_uid_base=uid_base, workers=workers)
    unshare = shutil.which("unshare")
    candidates: list[Sandbox] = []
    if root and isolation in ("auto", "namespace") and unshare:
        candidates.append(Sandbox("namespace", (unshare, *NAMESPACE_PREFIX, "--"), False, False))
    if root and isolation in ("auto", "setuid"):
        candidates.append(Sandbox("setuid", (), True, False))
    if isolation == "process" or (isolation == "auto" and not root):
        if unshare:  # unprivileged user namespaces, where the kernel allows them
            candidates.append(Sandbox("process", (unshare, *USERNS_PREFIX, "--"), False, True))
        candidates.append(Sandbox("process", (), True, True))
    if root and isolation != "process":
        _check_sandbox_ids(uid_base, workers)
    failures = []
    for sandbox in candidates:
        result = run_one(_probe_program(sandbox, uid_base), probe_cfg, sandbox, slot=0)
        if result.status == "passed":
            _warn_about(sandbox, root)
            return sandbox
        failures.append(f"{sandbox.mode}{' (user namespace)' if sandbox.prefix else ''}: {result.detail}")
    if failures:
        why = "; ".join(failures)
    elif not root:
        why = f"{isolation!r} needs root; use 'process' (or 'auto')"
    else:
        why = "`unshare` is not installed"
    raise UsageError(f"isolation: cannot sandbox code execution here with {isolation!r}: {why}")


def _check_sandbox_ids(uid_base: int, workers: int) -> None:
    for uid in range(uid_base, uid_base + workers):
        for lookup, kind in ((pwd.getpwuid, "user"), (grp.getgrgid, "group")):
            try:
                entry = lookup(uid)
            except KeyError:
                continue
            raise UsageError(f"sandbox_uid_base: id {uid} belongs to {kind} {entry[0]!r}; "
                             f"choose ids {uid_base}..{uid_base + workers - 1} that no user or group has")


def _probe_program(sandbox: Sandbox, uid_base: int) -> str:
    """Checks that the mode really took effect, and that the stdlib is readable after the drop."""
    lines = ["import os, socket, fractions"]
    if sandbox.mode in ("namespace", "setuid"):
        lines.append(f"assert os.getuid() == {uid_base}, os.getuid()")
    if not sandbox.network_guard:
        lines.append("assert [n for _, n in socket.if_nameindex()] == ['lo'], socket.if_nameindex()")
    return "\n".join(lines) + "\n"


def _warn_about(sandbox: Sandbox, root: bool) -> None:
    guard = "a Python-level guard is NOT a sandbox (ctypes or a subprocess bypass it)"
    if sandbox.network_guard:
        _warn_once("network", "no network namespace is available (`unshare --net` failed): only a "
                   f"Python-level socket guard keeps checks off the network; {guard}.")
    if sandbox.file_guard:
        _warn_once("files", "checks run as this user without namespaces: your files are protected "
                   "from deletion only by a Python-level guard, and processes that leave their session "
                   f"are not swept; {guard}." + (" As root, RLIMIT_NPROC does not bound fork bombs."
                                                 if root else ""))


def run_one(program: str, cfg: ExecutorConfig, sandbox: Sandbox, slot: int,
            running: RunningChecks | None = None) -> CheckResult:
    """One check in ``sandbox``, as the uid of worker ``slot`` when the mode drops privileges;
    registered in ``running`` while it runs."""
    uid = cfg.sandbox_uid_base + slot if sandbox.mode in ("namespace", "setuid") else None
    start = time.monotonic()
    prefix = f"{WORK_DIR_PREFIX}{os.getpid()}-"
    with _slot_lock(uid), tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as base:
        os.chmod(base, 0o711)  # the sandbox uid may traverse to work/, not list or read the rest
        workdir = os.path.join(base, "work")  # namespace mode: the child makes its own in a tmpfs
        if sandbox.mode != "namespace":
            os.mkdir(workdir, 0o700)
            if uid is not None:
                os.chown(workdir, uid, uid)
        program_path = os.path.join(base, "program.py")
        with open(program_path, "w", encoding="utf-8") as f:
            f.write(program)
        with open(program_path, "rb") as stdin, open(os.path.join(base, "output"), "w+b") as output, \
                open(os.path.join(base, "result"), "w+b") as result:
            # the check's lifeline: it reads EOF when this process is gone (the module docstring)
            alive_read, alive_write = os.pipe()
            child_cfg = {
                "mode": sandbox.mode, "uid": uid, "gid": uid, "workdir": workdir,
                "result_fd": result.fileno(), "alive_fd": alive_read, "tmp_size_mb": cfg.file_size_mb,
                "network_guard": sandbox.network_guard, "file_guard": sandbox.file_guard,
                "limits": _limits(cfg),
            }
            home = "/tmp/work" if sandbox.mode == "namespace" else workdir
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                   "HOME": home, "TMPDIR": home}
            cmd = [*sandbox.prefix, cfg.python, "-I", "-S", "-B", CHILD_SCRIPT, json.dumps(child_cfg)]
            try:
                proc = subprocess.Popen(cmd, stdin=stdin, stdout=output, stderr=subprocess.STDOUT,
                                        env=env, cwd=base, pass_fds=(result.fileno(), alive_read),
                                        start_new_session=True)
            except BaseException:
                os.close(alive_write)
                raise
            finally:
                os.close(alive_read)
            timed_out = False
            try:
                if running is not None:
                    running.add(proc.pid)
                proc.wait(timeout=cfg.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # the leader is not reaped yet: pgid still ours
                proc.wait()
            finally:
                if running is not None:
                    running.discard(proc.pid)
                os.close(alive_write)
                if uid is not None:
                    _sweep_uid(uid, kill=sandbox.mode == "setuid" or timed_out)
            seconds = time.monotonic() - start
            if timed_out:
                return CheckResult("timeout", f"wall-clock limit of {cfg.timeout_s:g} s; process group killed",
                                   seconds)
            result.seek(0)
            verdict = result.read()
            if not verdict:
                output.seek(max(0, os.fstat(output.fileno()).st_size - OUTPUT_TAIL_BYTES))
                tail = output.read().decode("utf-8", "replace").strip().replace("\n", " | ")
                return CheckResult("error", f"sandbox gave no verdict (exit status {proc.returncode}): {tail}",
                                   seconds)
            verdict = json.loads(verdict)
            return CheckResult(verdict["status"], verdict["detail"], seconds)


def _limits(cfg: ExecutorConfig) -> dict[str, int]:
    mib = 1024 * 1024
    return {"RLIMIT_AS": cfg.memory_mb * mib, "RLIMIT_CPU": cfg.cpu_s, "RLIMIT_FSIZE": cfg.file_size_mb * mib,
            "RLIMIT_NOFILE": cfg.open_files, "RLIMIT_NPROC": cfg.max_processes, "RLIMIT_CORE": 0}


class _slot_lock:
    """Serialises use of one sandbox uid across threads and processes (an flock per uid)."""

    def __init__(self, uid: int | None):
        self.path = None if uid is None else os.path.join(tempfile.gettempdir(), f"megatron-diffusion-sandbox-{uid}.lock")

    def __enter__(self):
        if self.path is not None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        if self.path is not None:
            os.close(self.fd)  # releases the flock


def _sweep_uid(uid: int, kill: bool) -> None:
    """Make sure no process of ``uid`` is left before the slot's uid is used again.

    ``kill -9 -1`` run *as* ``uid`` kills every process of that uid (the kill itself excepted),
    atomically with respect to fork. Then wait until they are gone: after a timeout the pid
    namespace is torn down asynchronously, and processes still exiting would count against the
    next check's RLIMIT_NPROC.
    """
    deadline = time.monotonic() + 10.0
    while True:
        if kill:
            subprocess.run([shutil.which("kill") or "/bin/kill", "-9", "-1"], user=uid, group=uid,
                           extra_groups=[], env={"PATH": "/usr/bin:/bin"}, cwd="/",
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not pids_of_uid(uid):
            return
        if time.monotonic() > deadline:
            _warn_once(f"sweep-{uid}", f"processes of sandbox uid {uid} survived for 10 s after their check")
            return
        kill = True
        time.sleep(0.01)


def pids_of_uid(uid: int) -> list[int]:
    """Live processes whose real uid is ``uid``, from /proc/PID/status (/proc/PID itself is owned
    by root for processes that dropped privileges). Zombies are dead and skipped: reaping them
    is up to init, which on some machines takes a second or two."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "status"), "rb") as f:
                for line in f:
                    if line.startswith(b"State:") and line.split()[1] in (b"Z", b"X"):
                        break
                    if line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(entry.name))
                        break
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
    return found
