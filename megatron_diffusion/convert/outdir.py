"""Output directories that appear complete or not at all.

A conversion writes into ``.NAME.tmp-PID`` next to ``--out`` and renames it to ``--out`` only
when everything is written; on any error (or Ctrl-C) the temporary directory is removed. A
``kill -9`` (or a lost node) leaves it behind: the next conversion to the same ``--out`` deletes
the ``.NAME.tmp-PID`` of every process that is gone (``fileio.remove_stale_temporaries``, as
``preprocess`` does). An existing non-empty ``--out`` is refused unless ``--force``, and then
replaced only at the end, so a failed ``--force`` run leaves the old output in place. The
directory gets the mode ``mkdir`` gives (0755 under the usual umask 022), so colleagues on a
shared cluster can read the output.

Under torchrun (``reshard``), rank 0 creates and commits the directory and the path is
broadcast; the other ranks write their shards into it.
"""

import contextlib
import os
import shutil
from pathlib import Path

import torch.distributed as dist

from megatron_diffusion.errors import UsageError
from megatron_diffusion.fileio import remove_stale_temporaries


def check_output_dir(out, force: bool, option: str = "--out") -> Path:
    out = Path(out)
    if out.exists() and not force:
        if not out.is_dir():
            raise UsageError(f"{option}: {out} exists and is not a directory; pass --force to "
                             "replace it")
        if any(out.iterdir()):
            raise UsageError(f"{option}: {out} is not empty; pass --force to replace it")
    return out


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


@contextlib.contextmanager
def atomic_output_dir(out, force: bool, option: str = "--out"):
    """Yield a temporary directory that becomes ``out`` when the ``with`` body succeeds."""
    out = check_output_dir(out, force, option).absolute()
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    tmp = None
    if _rank() == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)  # a killed run's, whose pid this process reuses
        tmp.mkdir()
    if distributed:
        box = [str(tmp) if tmp else None]
        dist.broadcast_object_list(box, src=0)
        tmp = Path(box[0])
    try:
        yield tmp
        if distributed:
            dist.barrier()
    except BaseException:
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if _rank() == 0:
        old = None
        if out.exists() or out.is_symlink():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    if distributed:
        dist.barrier()
