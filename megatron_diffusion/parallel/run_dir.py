"""A run's directory and wandb id, stable across SLURM requeues, and a snapshot of what ran.

A long CPT run is many SLURM executions of one job: it is preempted or hits its time limit,
requeues (``scontrol requeue`` keeps the job id) and resumes from its last checkpoint. Everything
that names the run must therefore survive a restart:

* the run directory is the user's ``--run-dir``, else ``RUNS_ROOT/<job name>-<job id>`` under
  SLURM (``slurm/pretrain.sbatch`` derives the same path in bash), else a name the caller
  chooses (the trainer uses the config's);
* the wandb run id is generated once and kept in ``RUN_DIR/wandb_id``, so every restart resumes
  the same wandb run (``wandb.init(id=..., resume="allow")``);
* each start writes ``RUN_DIR/snapshots/<UTC time>-r<restart>/`` with the resolved config, the
  command line, the code version (package version, git commit, dirty flag and diff) and the
  installed packages, because the code may change between restarts of a months-long run.

Only global rank 0 should call ``wandb_run_id`` and ``snapshot_run``; both are safe if two
processes race (the id file is created with an atomic link, snapshots by rename).
"""

import datetime
import importlib.metadata
import os
import platform
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

import megatron_diffusion
from megatron_diffusion.errors import UsageError

WANDB_ID_FILE = "wandb_id"
SNAPSHOTS_DIR = "snapshots"
KEY_PACKAGES = (
    "megatron-diffusion",
    "torch",
    "megatron-core",
    "transformer-engine",
    "flash-attn",
    "deepspeed",
    "numpy",
    "transformers",
    "tokenizers",
    "datasets",
    "zarr",
    "safetensors",
    "wandb",
)
"""Packages whose versions decide numerics or checkpoint formats: listed in version.yaml."""
MAX_DIFF_BYTES = 1 << 20
"""A dirty checkout's ``git diff`` is kept up to this size (larger diffs are truncated)."""


def job_run_name(job_name: str, job_id: str) -> str:
    """``<job name>-<job id>`` with characters other than ``A-Za-z0-9._-`` made ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", job_name) + "-" + job_id


def resolve_run_dir(
    run_dir: str | os.PathLike | None,
    environ: Mapping[str, str] | None = None,
    runs_root: str | os.PathLike = "runs",
    default_name: str | None = None,
) -> Path:
    """The run directory: ``run_dir`` if given; else ``runs_root/<job name>-<job id>`` in a
    SLURM job; else ``runs_root/default_name`` (e.g. the config's name).

    With neither SLURM nor ``default_name`` a run directory must be given: a name made from the
    time or the pid would differ between ranks and between restarts.
    """
    if run_dir is not None and str(run_dir).strip():
        return Path(run_dir)
    environ = os.environ if environ is None else environ
    job_id = environ.get("SLURM_JOB_ID", "").strip()
    if job_id:
        job_name = environ.get("SLURM_JOB_NAME", "").strip() or "job"
        return Path(runs_root) / job_run_name(job_name, job_id)
    if default_name:
        return Path(runs_root) / default_name
    raise UsageError("--run-dir: required outside a SLURM job (no SLURM_JOB_ID to name it)")


_HELD_LOCKS: dict[str, int] = {}
"""Run-directory locks this process holds: lock path -> open file descriptor (kept open: the
lock lives as long as the descriptor, and the kernel drops it when the process dies)."""


def lock_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / ".lock"


def lock_run(run_dir: str | os.PathLike) -> None:
    """Take the run directory's advisory lock (``flock``) for the life of this process, or raise
    one ``UsageError`` naming its holder: two trainers on one run directory deleted each other's
    ``.tmp`` checkpoints and interleaved ``metrics.jsonl``. A dead holder (kill -9, a lost node)
    holds nothing: the kernel releases a ``flock`` with the process. The lock file is
    ``RUN_DIR/.lock`` (created with the directory); ``--overwrite`` takes the old run's lock,
    removes the run (``unlock_run``) and locks the new directory."""
    import fcntl
    import socket

    path = lock_path(run_dir)
    if str(path) in _HELD_LOCKS:
        return  # this process holds it already (a second run in one process, as tests do)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UsageError(f"--run-dir: {run_dir} is in use by another trainer ({holder}; lock "
                         f"{path}); wait for it to end or use another --run-dir") from None
    except OSError as e:  # a file system without flock (some NFS/Lustre mounts): say so, go on
        os.close(fd)
        print(f"warning: --run-dir: cannot lock {path} ({e.strerror}); nothing stops a second "
              "trainer on this run directory", file=sys.stderr, flush=True)
        return
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _HELD_LOCKS[str(path)] = fd


def unlock_run(run_dir: str | os.PathLike) -> None:
    """Release this process's lock of ``run_dir`` (after ``remove_run`` took the directory)."""
    fd = _HELD_LOCKS.pop(str(lock_path(run_dir)), None)
    if fd is not None:
        os.close(fd)


def remove_run(run_dir: str | os.PathLike) -> None:
    """Delete a run directory for ``train --overwrite``: renamed aside first (one atomic step,
    so nobody sees a half-deleted run mixed with a new one), then removed."""
    import shutil

    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    aside = run_dir.with_name(f".{run_dir.name}.removing-{os.getpid()}")
    os.replace(run_dir, aside)
    shutil.rmtree(aside)


def wandb_run_id(run_dir: str | os.PathLike) -> str:
    """The run's wandb id: read from ``RUN_DIR/wandb_id``, created there on the first call.

    The id is 8 characters of ``[a-z0-9]``, like ``wandb.util.generate_id()``. The file is
    written to a temporary name and linked into place, so concurrent callers agree on one id.
    """
    run_dir = Path(run_dir)
    path = run_dir / WANDB_ID_FILE
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        new_id = "".join(secrets.choice(alphabet) for _ in range(8))
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".wandb_id.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(new_id + "\n")
            os.link(tmp, path)  # fails if another process linked first: then read theirs
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    run_id = path.read_text().strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", run_id):
        raise UsageError(f"{path}: got {run_id!r}, expected a wandb run id ([A-Za-z0-9_-]+)")
    return run_id


def _git(checkout: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(checkout), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def code_version(checkout: str | os.PathLike | None = None) -> tuple[dict, str]:
    """(version facts, ``git diff HEAD`` text) for the package's source checkout.

    ``checkout`` defaults to the directory holding the ``megatron_diffusion`` package; outside a
    git checkout (an installed wheel) the git fields are None.
    """
    if checkout is None:
        checkout = Path(megatron_diffusion.__file__).resolve().parent.parent
    checkout = Path(checkout)
    commit = _git(checkout, "rev-parse", "HEAD")
    porcelain = _git(checkout, "status", "--porcelain") if commit else None
    diff = (_git(checkout, "diff", "HEAD") or "") if porcelain else ""
    packages = {}
    for name in KEY_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    facts = {
        "package_version": megatron_diffusion.__version__,
        "git_commit": commit.strip() if commit else None,
        "git_dirty": bool(porcelain.strip()) if porcelain is not None else None,
        "git_status": porcelain.splitlines() if porcelain else [],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
    }
    return facts, diff


def _freeze() -> str:
    """``name==version`` of every installed distribution: pip freeze without running pip."""
    lines = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            lines.add(f"{name}=={dist.version}")
    return "\n".join(sorted(lines, key=str.lower)) + "\n"


def snapshot_run(
    run_dir: str | os.PathLike,
    config: Mapping,
    argv: Sequence[str],
    restart_count: int = 0,
    extra: Mapping | None = None,
) -> Path:
    """Write ``RUN_DIR/snapshots/<UTC time>-r<restart_count>/`` and return its path.

    Files: ``config.yaml`` (``config`` as given: the resolved config), ``command.txt`` (``argv``
    shell-quoted), ``version.yaml`` (``code_version`` facts, hostname, time and ``extra``, e.g.
    the launch environment), ``requirements.txt`` (installed packages) and ``git.diff`` when the
    checkout is dirty. Written under a temporary name and renamed, so a crash leaves no
    half-written snapshot.
    """
    stamp = datetime.datetime.now(datetime.timezone.utc)
    root = Path(run_dir) / SNAPSHOTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    facts, diff = code_version()
    facts.update(
        time=stamp.isoformat(timespec="seconds"),
        hostname=platform.node(),
        restart_count=restart_count,
        **dict(extra or {}),
    )
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        (tmp / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
        (tmp / "command.txt").write_text(shlex.join(argv) + "\n")
        (tmp / "version.yaml").write_text(yaml.safe_dump(facts, sort_keys=False))
        (tmp / "requirements.txt").write_text(_freeze())
        if diff:
            data = diff.encode()
            if len(data) > MAX_DIFF_BYTES:
                data = data[:MAX_DIFF_BYTES] + b"\n[truncated]\n"
            (tmp / "git.diff").write_bytes(data)
        name = stamp.strftime("%Y%m%dT%H%M%SZ") + f"-r{restart_count}"
        final = root / name
        suffix = 1
        while True:
            try:
                tmp.rename(final)  # fails if a snapshot of the same second exists
                return final
            except OSError:
                if not final.exists():
                    raise
                suffix += 1
                final = root / f"{name}.{suffix}"
    except BaseException:
        for path in tmp.glob("*"):
            path.unlink()
        tmp.rmdir()
        raise
