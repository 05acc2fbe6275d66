"""Signal recording, the cross-rank stop decision and the PREEMPTED marker."""

import os
import signal
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_diffusion.parallel.preemption import (
    MARKER,
    Preemption,
    clear_marker,
    marker_exists,
    write_marker,
)


def test_signal_is_recorded_not_fatal_and_handlers_restored():
    before = signal.getsignal(signal.SIGUSR2)
    with Preemption() as preemption:
        assert not preemption.requested and not preemption.should_stop()
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.received == signal.SIGUSR2  # the first one is kept
        assert preemption.should_stop()
    assert signal.getsignal(signal.SIGUSR2) is before


def test_a_preemption_installed_over_another_keeps_and_hands_back_its_signal():
    """The CLI's, installed before the heavy imports, and the trainer's, installed over it."""
    with Preemption() as early:
        os.kill(os.getpid(), signal.SIGTERM)  # during the imports
        with Preemption() as trainer:
            assert trainer.received == signal.SIGTERM
    with Preemption() as early:
        with Preemption():
            os.kill(os.getpid(), signal.SIGUSR2)  # after a stage's trainer looked for the last time
        assert early.received == signal.SIGUSR2
        with Preemption() as next_stage:
            assert next_stage.received == signal.SIGUSR2


def test_marker_roundtrip(tmp_path):
    run = tmp_path / "run"
    assert not marker_exists(run) and not clear_marker(run)
    path = write_marker(run, "step 7 SIGUSR2")
    assert path == run / MARKER and path.read_text().rstrip().endswith("step 7 SIGUSR2")
    assert [p.name for p in run.iterdir()] == [MARKER]  # no temp file left
    assert clear_marker(run) and not marker_exists(run)


def _rank(rank: int, port: int, signalled_rank: int, results) -> None:
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=rank == 0)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    preemption = Preemption().install()
    decisions = [preemption.should_stop()]
    if rank == signalled_rank:
        os.kill(os.getpid(), signal.SIGUSR2)
    decisions.append(preemption.should_stop())
    results[rank] = (preemption.requested, decisions)
    dist.destroy_process_group()


@pytest.mark.distributed
def test_one_signalled_rank_stops_both():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        procs = [ctx.Process(target=_rank, args=(r, port, 1, results)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0, 0]
        assert dict(results) == {0: (False, [False, True]), 1: (True, [False, True])}
