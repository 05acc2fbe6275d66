"""The trajectory store: data rows with the reveal order chosen for each searched block.

Both sides of the format live here: ``TrajectoryStore`` writes it (``distill-trajectories``),
``TrajectoryRows`` reads it back as training rows (``data.trajectories``; ``trajectory_rows``
builds them for the data loader, which is given them and does not import this level).

A trajectory directory holds one zarr v3 group per data-parallel rank that searched it
(``DIR/rank00000-of-00002.zarr``), one chunk per row so a row is written whole and in any order:
the packed row's ``tokens`` and ``document_ids``, the ``step_map`` of each searched block's
selected order (``-1`` on context positions), the ELBO of the selected order and of the
comparison orders, which candidate was chosen, and ``done``, written last, so a killed run
resumes at the rows not done. ``attrs`` hold the format, the settings (a resume with other
settings is refused) and the candidates' labels. The group is created whole or not at all
(``fileio.atomic_dir``); a full or read-only disk is one line. ``TrajectoryRows`` lists the done
rows of every group in a fixed order and gives one by index. docs/distillation.md
"distill-trajectories" lists the arrays.
"""

from pathlib import Path

import numpy as np
import zarr

from megatron_diffusion.data.config import DataConfig
from megatron_diffusion.errors import UsageError
from megatron_diffusion.fileio import atomic_dir, output_errors

FORMAT = "megatron-diffusion-trajectories"
FORMAT_VERSION = 1
ELBOS = ("elbo_selected", "elbo_search", "elbo_left_to_right", "elbo_random", "elbo_exact")


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

    # loader workers get the rows this process listed and reopen the groups
    def __getstate__(self):
        return {"path": self.path, "index": self.index}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.groups = read_shards(self.path)


def trajectory_rows(cfg: DataConfig) -> TrajectoryRows | None:
    """The rows of ``data.trajectories`` for ``data.loader.DiffusionDataLoader(...,
    trajectory_rows=)``; None when the run trains on the blend."""
    return None if cfg.trajectories is None else TrajectoryRows(cfg.trajectories, cfg.seq_len)


class TrajectoryStore:
    """One rank's store; ``open`` creates it or resumes it with the same settings."""

    def __init__(self, path: Path, group):
        self.path, self.group = path, group

    @staticmethod
    def open(path: Path, *, rows: int, seq_len: int, blocks: int, settings: dict,
             candidates: list[str]) -> "TrajectoryStore":
        if path.exists():
            group = zarr.open_group(store=str(path), mode="r+", zarr_format=3)
            if group.attrs.get("format") != FORMAT or group.attrs.get("settings") != settings:
                raise UsageError(f"--out: {path} holds trajectories made with other settings "
                                 f"({group.attrs.get('settings')}); use another --out")
            return TrajectoryStore(path, group)
        with atomic_dir(path) as tmp:
            group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
            for name, dtype in (("tokens", "int32"), ("document_ids", "int32"),
                                ("step_map", "int16")):
                group.create_array(name, shape=(rows, seq_len), chunks=(1, seq_len), dtype=dtype,
                                   fill_value=-1)
            for name in ELBOS:
                group.create_array(name, shape=(rows, blocks), chunks=(1, blocks),
                                   dtype="float32", fill_value=float("nan"))
            group.create_array("choice", shape=(rows, blocks), chunks=(1, blocks), dtype="int8",
                               fill_value=-1)
            group.create_array("done", shape=(rows,), chunks=(1,), dtype="bool", fill_value=False)
            group.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                                "settings": settings, "candidates": candidates})
        return TrajectoryStore(path, zarr.open_group(store=str(path), mode="r+", zarr_format=3))

    def pending(self, rows: list[int]) -> list[int]:
        done = self.group["done"][:]
        return [r for r in rows if not done[r]]

    def write_row(self, r: int, *, tokens, document_ids, step_map, choice, **elbos) -> None:
        with output_errors(self.path, hint=f"; row {r} is not stored, the rows done before it "
                           "are kept: a re-run with the same settings resumes at the others"):
            self.group["tokens"][r] = np.asarray(tokens, dtype=np.int32)
            self.group["document_ids"][r] = np.asarray(document_ids, dtype=np.int32)
            self.group["step_map"][r] = np.asarray(step_map, dtype=np.int16)
            self.group["choice"][r] = np.asarray(choice, dtype=np.int8)
            for name in ELBOS:
                self.group[name][r] = np.asarray(elbos[name], dtype=np.float32)
            self.group["done"][r] = True  # last: the row is whole
