"""Atomic file output: a reader (a person, a resumed run, another rank) never sees a torn file.

Write to a temporary sibling, rename it onto the target when the write succeeded, and remove it
when it failed or was interrupted. The temporary name keeps the target's extension (matplotlib
and ``tokenizers`` pick the format from it) and includes the pid, so concurrent writers of the
same file from different processes do not collide.

An output that is a directory, or a write that fails because the file system is full,
read-only or not writable, is a ``UsageError`` naming the output (one line, exit 2 at the CLI).

Directory outputs (a store of ``preprocess``, a trajectory store of ``distill-trajectories``, a
``convert`` output) are built in a ``.NAME.tmp-PID`` sibling (``atomic_dir``); a ``kill -9``
leaves it behind, and ``remove_stale_temporaries`` (called by the next run writing the same
output) deletes those whose process is gone.

``output_errors`` is the one place that tells an output's failure (a full disk, a read-only
file system, no permission) from any other ``OSError`` and turns it into that one line; the
helpers here use it, and so does a writer that appends to an existing output in place.
"""

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from megatron_diffusion.errors import UsageError

OUTPUT_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EISDIR,
                 errno.ENOTDIR, errno.ENOENT)


def _concerns(filename, path: Path, temporaries) -> bool:
    """Whether a failed call on ``filename`` was a write of the output ``path``: no filename (a
    failed ``write()``, e.g. ENOSPC), ``path`` or a temporary or anything inside them, or a
    parent directory of ``path`` being created; not an input the writer was reading."""
    if filename is None:
        return True
    f = Path(os.fsdecode(filename)).absolute()
    roots = [Path(p).absolute() for p in (path, *temporaries)]
    return any(f == r or r in f.parents for r in roots) or f in roots[0].parents


@contextlib.contextmanager
def output_errors(path: str | os.PathLike, *temporaries, hint: str = "") -> Iterator[None]:
    """Turn a failed write of the output ``path`` (or of its ``temporaries``) because the file
    system is full, read-only or not writable into ``UsageError("PATH: cannot write (REASON)"
    + hint)``; any other ``OSError`` propagates."""
    try:
        yield
    except OSError as e:
        if e.errno in OUTPUT_ERRNOS and _concerns(e.filename, Path(path), temporaries):
            raise UsageError(f"{path}: cannot write ({e.strerror}){hint}") from None
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, expected a file to write")
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        with output_errors(path, tmp):
            yield tmp
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty directory ``.NAME.tmp-PID`` next to ``path`` (its parents created); on
    success it replaces ``path`` (an existing one is renamed aside first, then deleted), on any
    error or interrupt it is removed, so ``path`` is whole or as it was. A full, read-only or
    unwritable file system is the one-line ``UsageError`` of ``output_errors``. Leftovers of a
    killed writer of the same ``path`` are removed first (``remove_stale_temporaries``)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    aside = path.parent / f".{path.name}.tmp-old-{os.getpid()}"  # a stale temporary if killed
    try:
        with output_errors(path, tmp, aside):
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(path)
            shutil.rmtree(tmp, ignore_errors=True)  # a killed run's, whose pid this one reuses
            tmp.mkdir()
            yield tmp
            replacing = path.exists() or path.is_symlink()
            if replacing:
                os.replace(path, aside)
            try:
                os.replace(tmp, path)
            except BaseException:
                if replacing:
                    os.replace(aside, path)
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        elif aside.exists() or aside.is_symlink():
            aside.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove_stale_temporaries(out: Path) -> None:
    """Delete ``.NAME.tmp-PID`` siblings of ``out`` whose process is gone (a ``kill -9``
    leaves them: the writer's cleanup never ran). A live pid's directory is left alone; a pid is
    only known on this host, so a run writing the same output from another node is not seen."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        if owner_gone(tmp.name.rsplit("-", 1)[-1]):
            shutil.rmtree(tmp, ignore_errors=True)


def owner_gone(pid: str) -> bool:
    """Whether the process ``pid`` (the digits a temporary's name carries) is gone from this
    host; False for this process, a live one (another user's too) or text that is no pid."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        pass  # alive under another user / not a pid
    return False
