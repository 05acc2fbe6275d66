"""Reading the trajectory stores of ``distill-trajectories`` (the writer: distill/trajectory_store.py).

A trajectory directory holds one zarr v3 group per data-parallel rank that searched it,
``rank00000-of-00002.zarr``; each group's rows carry ``tokens``, ``document_ids`` and
``step_map`` ``[rows, L]`` (the reveal step of each searched position, -1 on context) and a
``done`` flag. ``TrajectoryRows`` lists the done rows of every group in a fixed order and gives
one by index: the training rows of a ``data.trajectories`` run.
"""

from pathlib import Path

import numpy as np
import zarr

from megatron_diffusion.errors import UsageError

FORMAT = "megatron-diffusion-trajectories"
FORMAT_VERSION = 1


def shard_path(out: Path, rank: int, world: int) -> Path:
    return Path(out) / f"rank{rank:05d}-of-{world:05d}.zarr"


def read_shards(out) -> list:
    """Every rank's group under ``out``, checked to be trajectory stores."""
    paths = sorted(Path(out).glob("rank*-of-*.zarr"))
    if not paths:
        raise UsageError(f"data.trajectories: no trajectory store (rank*-of-*.zarr) in {out}")
    groups = [zarr.open_group(store=str(p), mode="r", zarr_format=3) for p in paths]
    for p, g in zip(paths, groups):
        if g.attrs.get("format") != FORMAT or g.attrs.get("format_version") != FORMAT_VERSION:
            raise UsageError(f"data.trajectories: {p} is not a version-{FORMAT_VERSION} "
                             f"trajectory store (format {g.attrs.get('format')!r})")
    return groups


class TrajectoryRows:
    """The done rows of a trajectory directory, in (group, row) order."""

    def __init__(self, out, seq_len: int):
        self.path = str(out)
        self.groups = read_shards(out)
        self.index = [(k, int(r)) for k, g in enumerate(self.groups) for r in np.flatnonzero(g["done"][:])]
        if not self.index:
            raise UsageError(f"data.trajectories: {out} has no finished row")
        width = self.groups[0]["tokens"].shape[1]
        if width != seq_len:
            raise UsageError(f"data.trajectories: rows of {width} tokens in {out}, data.seq_len is {seq_len}")

    def __len__(self) -> int:
        return len(self.index)

    def row(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(tokens_L, document_ids_L, step_map_L)`` of row ``j``."""
        k, r = self.index[j]
        g = self.groups[k]
        return g["tokens"][r], g["document_ids"][r], g["step_map"][r]
