"""Atomic file output: a reader (a person, a resumed run, another rank) never sees a torn file.

Write to a temporary sibling, rename it onto the target when the write succeeded, and remove it
when it failed or was interrupted. The temporary name keeps the target's extension (matplotlib
and ``tokenizers`` pick the format from it) and includes the pid, so concurrent writers of the
same file from different processes do not collide.

An output that is a directory, or a write that fails because the file system is full,
read-only or not writable, is a ``UsageError`` naming the output (one line, exit 2 at the CLI).

Directory outputs (a store of ``preprocess``, a ``convert`` output) are built in a
``.NAME.tmp-PID`` sibling; a ``kill -9`` leaves it behind, and ``remove_stale_temporaries``
(called by the next run writing the same output) deletes those whose process is gone.
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, expected a file to write")
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        # the output's own fault (not an input the body was reading): no filename means a
        # failed write() to it, e.g. ENOSPC
        ours = e.filename in (None, str(tmp), str(path))
        if ours and e.errno in OUTPUT_ERRNOS:
            raise UsageError(f"{path}: cannot write ({e.strerror})") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove_stale_temporaries(out: Path) -> None:
    """Delete ``.NAME.tmp-PID`` siblings of ``out`` whose process is gone (a ``kill -9``
    leaves them: the writer's cleanup never ran). A live pid's directory is left alone; a pid is
    only known on this host, so a run writing the same output from another node is not seen."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (PermissionError, OverflowError):
            pass  # alive under another user / not a pid
