"""Atomic file output: a reader (a person, a resumed run, another rank) never sees a torn file.

Write to a temporary sibling, rename it onto the target when the write succeeded, and remove it
when it failed or was interrupted. The temporary name keeps the target's extension (matplotlib
and ``tokenizers`` pick the format from it) and includes the pid, so concurrent writers of the
same file from different processes do not collide.
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
