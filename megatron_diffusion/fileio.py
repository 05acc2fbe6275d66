"""Atomic file output: a reader (a person, a resumed run, another rank) never sees a torn file.

Write to a temporary sibling, rename it onto the target when the write succeeded, and remove it
when it failed or was interrupted. The temporary name keeps the target's extension (matplotlib
and ``tokenizers`` pick the format from it) and includes the pid, so concurrent writers of the
same file from different processes do not collide.

An output that is a directory, or a write that fails because the file system is full,
read-only or not writable, is a ``UsageError`` naming the output (one line, exit 2 at the CLI).
"""

import contextlib
import errno
import os
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
