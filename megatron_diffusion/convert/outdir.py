"""Output directories that appear complete or not at all.

A conversion writes into ``.NAME.tmp-PID`` next to ``--out`` and renames it to ``--out`` only
when everything is written; on any error (or Ctrl-C) the temporary directory is removed; a full
or read-only disk is one line naming ``--out``. A ``kill -9`` (or a lost node) leaves it behind:
the next conversion to the same ``--out`` deletes the ``.NAME.tmp-PID`` of every process that is
gone. All of that is ``fileio.atomic_dir``, as for ``preprocess``. An existing non-empty
``--out`` is refused unless ``--force``, and then replaced only at the end, so a failed
``--force`` run leaves the old output in place. The directory gets the mode ``mkdir`` gives
(0755 under the usual umask 022), so colleagues on a shared cluster can read the output.

Under torchrun (``reshard``), rank 0 creates and commits the directory and the path is
broadcast; the other ranks write their shards into it.
"""

import contextlib
from pathlib import Path

import torch.distributed as dist

from megatron_diffusion.errors import UsageError
from megatron_diffusion.fileio import atomic_dir


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
    """Yield a temporary directory that becomes ``out`` when the ``with`` body succeeds: rank 0
    holds ``fileio.atomic_dir`` (create, commit, clean up), the other ranks write into it."""
    out = check_output_dir(out, force, option).absolute()
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    with atomic_dir(out) if _rank() == 0 else contextlib.nullcontext() as tmp:
        if distributed:
            box = [str(tmp) if tmp else None]
            dist.broadcast_object_list(box, src=0)
            tmp = Path(box[0])
        yield tmp
        if distributed:
            dist.barrier()  # every rank's files are written before rank 0 renames
    if distributed:
        dist.barrier()  # and renamed before any rank returns
