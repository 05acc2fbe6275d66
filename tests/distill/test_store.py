"""The trajectory store's writer and reader agree, and the data loader reads the rows it is given:
the same rows with worker processes as without (the rows are pickled to the workers), and no
silent fallback to the blend when ``data.trajectories`` is set but no rows are given."""

import itertools
import pickle

import numpy as np
import pytest

from megatron_diffusion.data.config import DataConfig
from megatron_diffusion.data.loader import DiffusionDataLoader
from megatron_diffusion.distill.store import (ELBOS, TrajectoryRows, TrajectoryStore, shard_path,
                                              trajectory_rows)

L, ROWS, BLOCKS = 32, 6, 7


@pytest.fixture
def orders(tmp_path):
    """Rows 0-4 of 6 done; row r's tokens are ``100 * r + position``, its step map ``r``."""
    store = TrajectoryStore.open(shard_path(tmp_path / "orders", 0, 1), rows=ROWS, seq_len=L,
                                 blocks=BLOCKS, settings={"seed": 1}, candidates=["a"])
    for r in range(ROWS - 1):
        store.write_row(r, tokens=100 * r + np.arange(L), document_ids=np.zeros(L),
                        step_map=np.full(L, r), choice=np.zeros(BLOCKS),
                        **{name: np.zeros(BLOCKS) for name in ELBOS})
    return tmp_path / "orders"


def _cfg(tiny_store, orders, num_workers=0) -> DataConfig:
    return DataConfig(blend=[(1.0, str(tiny_store))], seq_len=L, micro_batch_size=2,
                      global_batch_size=2, num_workers=num_workers, seed=5,
                      trajectories=str(orders))


def test_the_reader_lists_the_done_rows_and_survives_pickling(orders):
    rows = TrajectoryRows(orders, L)
    assert len(rows) == ROWS - 1
    tokens, _, step_map = rows.row(3)
    assert tokens.tolist() == list(range(300, 300 + L)) and (step_map == 3).all()
    again = pickle.loads(pickle.dumps(rows))
    assert again.index == rows.index and again.row(3)[0].tolist() == tokens.tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_reads_the_rows_it_is_given(tiny_store, orders, workers):
    cfg = _cfg(tiny_store, orders, num_workers=workers)
    loader = DiffusionDataLoader(cfg, trajectory_rows=trajectory_rows(cfg))
    batches = list(itertools.islice(iter(loader), ROWS - 1))  # two epochs of 5 rows
    firsts = [int(t[0]) for b in batches for t in b.tokens_BL]
    assert sorted(firsts[:5]) == [0, 100, 200, 300, 400]
    assert sorted(firsts[5:10]) == [0, 100, 200, 300, 400]
    assert loader.state_dict()["trajectories"] == str(orders.resolve())


def test_trajectories_without_rows_or_rows_without_trajectories_is_refused(tiny_store, orders):
    cfg = _cfg(tiny_store, orders)
    with pytest.raises(ValueError, match="trajectory_rows: none with data.trajectories="):
        DiffusionDataLoader(cfg)
    blend_only = DataConfig(blend=[(1.0, str(tiny_store))], seq_len=L, num_workers=0)
    assert trajectory_rows(blend_only) is None
    with pytest.raises(ValueError, match="trajectory_rows: given with data.trajectories=None"):
        DiffusionDataLoader(blend_only, trajectory_rows=trajectory_rows(cfg))
