"""The process that runs one untrusted check; started by ``executor.py``, never imported.

Run as ``python -I -S -B sandbox_child.py CONFIG_JSON`` with the program's source on stdin. It is
a two-process pair: the *monitor* (this process) prepares the sandbox while it still has the
privileges to, forks the runner, and writes one JSON verdict to a descriptor the program cannot
reach (it never runs untrusted code, so the verdict cannot be forged); the *runner* lowers its
limits, drops to the sandbox uid, sets ``no_new_privs``, installs the mode's Python guards and
``exec``s the program, telling the monitor whether it ran to its end (``P``), failed an
assertion (``F``) or raised (``E``). As pid 1 of a pid namespace the monitor's exit kills every
process left; without one it kills its process group. End of file on ``alive_fd`` means the
evaluator is gone, and the monitor ends the check at once. docs/evaluation.md "The sandbox".

Only the standard library is used: this file runs under the interpreter that runs the checks,
which need not have the package installed.
"""

import ctypes
import json
import os
import signal
import stat
import sys
import threading
import traceback

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
PR_SET_NO_NEW_PRIVS = 38
WORKDIR_IN_NAMESPACE = "/tmp/work"
PROGRAM_NAME = "program.py"
MAX_MESSAGE_CHARS = 400

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _inaccessible_top(path):
    """The top-most ancestor of ``path`` (or ``path``) that other users cannot traverse."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for i in range(1, len(parts) + 1):
        prefix = os.sep + os.path.join(*parts[:i])
        if not os.stat(prefix).st_mode & stat.S_IXOTH:
            return prefix
    return None


def prepare_namespace(cfg):
    """Private mounts, as root inside fresh mount/pid/net namespaces; returns the work dir.

    - tmpfs over /tmp and /dev/shm: the check writes only there, into RAM of bounded size, and
      sees nothing of the host's temporary files.
    - The interpreter's install (sys.prefix, sys.base_prefix) must be readable by the sandbox
      uid. When an ancestor is private (pyenv under /root is 0700) or lies under a masked
      directory, a tmpfs is mounted over that ancestor (hiding its other contents) and the
      install is bind-mounted back, read-only, at its own path, so sys.path stays valid.
    - ``/`` is remounted read-only *for this mount namespace only* (MS_BIND makes the remount
      per-mount; the namespace's propagation is private, so the host is unaffected).
    """
    size = f"size={cfg['tmp_size_mb']}m"
    installs = sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)})
    installs = [p for p in installs if not any(p != q and p.startswith(q + os.sep) for q in installs)]
    masks = {"/tmp": f"{size},mode=1777", "/dev/shm": f"{size},mode=1777"}
    for p in installs:
        top = _inaccessible_top(p)
        if top is not None and not any(top == m or top.startswith(m + os.sep) for m in masks):
            masks[top] = "size=1m,mode=0755"
    # Open the installs before any mount can hide them; bind from the open descriptor.
    install_fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in installs}
    for mask in sorted(masks):
        if os.path.isdir(mask):
            _mount("tmpfs", mask, "tmpfs", MS_NOSUID | MS_NODEV, masks[mask])
    for p, fd in install_fds.items():
        if any(p == m or p.startswith(m + os.sep) for m in masks):
            os.makedirs(p, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
            _mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(fd)
    os.makedirs(WORKDIR_IN_NAMESPACE, mode=0o700)
    os.chown(WORKDIR_IN_NAMESPACE, cfg["uid"], cfg["gid"])
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return WORKDIR_IN_NAMESPACE


def apply_limits(limits):
    import resource

    for name, value in limits.items():
        soft, hard = (value, value + 1) if name == "RLIMIT_CPU" else (value, value)
        resource.setrlimit(getattr(resource, name), (soft, hard))


def drop_privileges(uid, gid):
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeError("privileges were not dropped: setuid(0) succeeded")


def install_network_guard():
    """Python-level refusal of sockets. NOT a sandbox: ctypes or a subprocess bypass it."""
    import _socket
    import socket

    def refuse(*args, **kwargs):
        raise PermissionError("network access is disabled in the evaluation sandbox")

    class RefusedSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            refuse()

    socket.socket = socket.SocketType = RefusedSocket
    _socket.socket = _socket.SocketType = RefusedSocket
    for name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname", "fromfd"):
        setattr(socket, name, refuse)


def install_file_guard(workdir):
    """Python-level refusal of destructive file calls outside ``workdir``. NOT a sandbox."""
    import builtins
    import io
    import shutil

    root = os.path.realpath(workdir)

    def inside(path, dir_fd=None):
        if isinstance(path, int):
            return False
        path = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        real = os.path.realpath(path)
        return real == root or real.startswith(root + os.sep)

    def guard(func, nargs=1):
        def guarded(*args, **kwargs):
            for path in args[:nargs]:
                if not inside(path, kwargs.get("dir_fd", kwargs.get("src_dir_fd"))):
                    raise PermissionError(f"{func.__name__}({path!r}) outside the work dir is blocked")
            return func(*args, **kwargs)
        return guarded

    for name in ("remove", "unlink", "rmdir", "removedirs", "truncate", "chmod", "chown", "lchown"):
        setattr(os, name, guard(getattr(os, name)))
    for name in ("rename", "renames", "replace", "link", "symlink"):
        setattr(os, name, guard(getattr(os, name), nargs=2))
    shutil.rmtree = guard(shutil.rmtree)
    shutil.move = guard(shutil.move, nargs=2)
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_os_open, real_open = os.open, io.open

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & writing and not inside(path, kwargs.get("dir_fd")):
            raise PermissionError(f"open({path!r}) for writing outside the work dir is blocked")
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError(f"open({file!r}, {mode!r}) outside the work dir is blocked")
        return real_open(file, mode, *args, **kwargs)

    os.open = guarded_os_open
    builtins.open = io.open = guarded_open


def describe(exc, source_lines):
    """``TypeName: message (line N: source)`` for the deepest frame inside the program."""
    line = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == PROGRAM_NAME and 0 < frame.lineno <= len(source_lines):
            line = f" (line {frame.lineno}: {source_lines[frame.lineno - 1].strip()})"
            break
    text = f"{type(exc).__name__}: {exc}".rstrip(": ") + line
    return text[:MAX_MESSAGE_CHARS]


def run_program(cfg, source, message_fd, workdir):
    """The runner: limits, privilege drop, guards, then the program. Never returns."""
    runner_pid = os.getpid()

    def tell(tag, text=""):
        if os.getpid() == runner_pid:  # forked children of the program must not speak for it
            os.write(message_fd, (tag + text[:MAX_MESSAGE_CHARS]).encode("utf-8", "replace"))

    try:
        os.chdir(workdir)
        apply_limits(cfg["limits"])
        if cfg["uid"] is not None:
            drop_privileges(cfg["uid"], cfg["gid"])
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if cfg["network_guard"]:
            install_network_guard()
        if cfg["file_guard"]:
            install_file_guard(workdir)
    except BaseException as e:  # noqa: BLE001 - any failure here means: do not run the program
        tell("S", f"sandbox setup failed: {type(e).__name__}: {e}")
        os._exit(1)
    text = source.decode("utf-8", "replace")
    try:
        code = compile(text, PROGRAM_NAME, "exec")
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except AssertionError as e:
        tell("F", describe(e, text.splitlines()))
    except BaseException as e:  # noqa: BLE001 - SystemExit too: leaving early is not passing
        tell("E", describe(e, text.splitlines()))
    else:
        tell("P")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(0)


def end_check():
    """Kill every process of the check, this one included (see the module docstring)."""
    if os.getpid() == 1:
        os._exit(1)  # the pid namespace goes with its init
    os.killpg(0, signal.SIGKILL)


def watch_evaluator(alive_fd):
    """A daemon thread that ends the check when the evaluator's end of ``alive_fd`` closes."""
    def watch():
        try:
            while os.read(alive_fd, 64):
                pass
        except OSError:
            pass
        end_check()

    threading.Thread(target=watch, daemon=True).start()


def verdict(wait_status, message, cfg, cpu_seconds):
    if message.startswith("P") and os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) == 0:
        return "passed", ""
    if message[:1] in ("F", "E", "S"):
        return {"F": "failed", "E": "error", "S": "error"}[message[0]], message[1:]
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        cpu_limit = cfg["limits"]["RLIMIT_CPU"]
        # SIGXCPU at the soft limit; SIGKILL at the hard one (soft + 1 s) if SIGXCPU was caught.
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_seconds >= cpu_limit):
            return "timeout", f"killed by {signal.Signals(sig).name}: CPU time limit of {cpu_limit} s"
        if sig == signal.SIGXFSZ:
            return "error", "killed by SIGXFSZ: file size limit exceeded"
        return "error", f"killed by {signal.Signals(sig).name}"
    return "error", f"exited with status {os.WEXITSTATUS(wait_status)} before the tests finished"


def main():
    cfg = json.loads(sys.argv[1])
    source = sys.stdin.buffer.read()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    result = os.fdopen(cfg["result_fd"], "w")
    try:
        workdir = prepare_namespace(cfg) if cfg["mode"] == "namespace" else cfg["workdir"]
    except OSError as e:
        json.dump({"status": "error", "detail": f"sandbox setup failed: {e}"}, result)
        return
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        os.close(cfg["alive_fd"])
        result.close()
        run_program(cfg, source, write_fd, workdir)
    os.close(write_fd)
    watch_evaluator(cfg["alive_fd"])  # after the fork: the runner has no copy of the thread
    _, wait_status, usage = os.wait4(pid, 0)
    os.set_blocking(read_fd, False)
    try:
        message = os.read(read_fd, 4 * MAX_MESSAGE_CHARS).decode("utf-8", "replace")
    except BlockingIOError:
        message = ""
    status, detail = verdict(wait_status, message, cfg, usage.ru_utime + usage.ru_stime)
    json.dump({"status": status, "detail": detail}, result)
    result.close()
    if os.getpid() != 1:
        # No pid namespace whose teardown kills the rest: take our process group with us.
        os.killpg(0, signal.SIGKILL)


if __name__ == "__main__":
    main()
