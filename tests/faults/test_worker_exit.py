"""A process whose loader iterator is still alive at exit must exit, not hang on its workers.

The loader workers ignore SIGTERM (so a preemption reaches the trainer's step boundary), and
multiprocessing's exit hook stops daemonic children with SIGTERM and then joins them: without the
loader's own exit hook, a run whose iterator was still referenced (a trainer object, a reference
cycle) hung forever after its last step. In-process, workers must stop when their iterator ends:
after a worker's read error (the process then hung at exit: CI timed out after the suite passed),
and when the garbage collector frees an iterator held in a cycle (torch's stop message cannot get
through then, and its SIGTERM fallback is ignored).
"""

import gc
import multiprocessing
import subprocess
import sys
import textwrap

import pytest

from megatron_diffusion.data.config import DataConfig
from megatron_diffusion.data.loader import DiffusionDataLoader
from megatron_diffusion.errors import UsageError
from tests.faults.conftest import json_store

pytestmark = pytest.mark.faults

SCRIPT = textwrap.dedent("""
    import sys
    from megatron_diffusion.data.config import DataConfig
    from megatron_diffusion.data.loader import DiffusionDataLoader
    cfg = DataConfig(blend=[(1.0, sys.argv[1])], seq_len=32, micro_batch_size=2,
                     global_batch_size=2, num_workers=1, seed=3)
    batches = iter(DiffusionDataLoader(cfg))
    next(batches)
    holder = {"batches": batches}
    holder["self"] = holder  # a cycle: nothing frees the iterator before the exit hooks run
    del batches
    print("done", flush=True)
""")


def test_exit_with_a_live_worker_iterator_does_not_hang(tiny_store, tmp_path):
    script = tmp_path / "live_iterator.py"
    script.write_text(SCRIPT)
    try:
        proc = subprocess.run([sys.executable, str(script), str(tiny_store)], capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: its loader worker ignored the exit hook's SIGTERM")
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout


def _new_live_children(before: set) -> list:
    gc.collect()
    return [p for p in multiprocessing.active_children() if p not in before]


def _loader(store) -> DiffusionDataLoader:
    return DiffusionDataLoader(DataConfig(blend=[(1.0, str(store))], seq_len=32, micro_batch_size=2,
                                          global_batch_size=2, num_workers=1, seed=3))


def test_workers_stop_when_a_worker_read_fails(tmp_path):
    store = json_store(tmp_path, "s.zarr", validation_fraction=0.0)
    chunk = store / "tokens" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[-6] ^= 0xFF  # the shard index: only a worker's read finds it (its CRC at first read)
    chunk.write_bytes(bytes(data))
    before = set(multiprocessing.active_children())
    with pytest.raises(UsageError, match="fails its checksum"):
        next(iter(_loader(store)))
    assert _new_live_children(before) == []


def test_workers_stop_when_gc_frees_an_iterator_in_a_cycle(tiny_store):
    before = set(multiprocessing.active_children())
    batches = iter(_loader(tiny_store))
    next(batches)
    holder = {"batches": batches}
    holder["self"] = holder
    del batches, holder
    assert _new_live_children(before) == []
