"""The cluster smoke test: its consistency checks, and a preempt/resume cycle on two processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from megatron_diffusion.parallel import selftest
from megatron_diffusion.parallel.selftest import check_views


def _views(num_nodes=2, per_node=2):
    views = []
    for node in range(num_nodes):
        for local in range(per_node):
            views.append(
                dict(
                    rank=node * per_node + local,
                    local_rank=local,
                    local_world_size=per_node,
                    node_rank=node,
                    num_nodes=num_nodes,
                    world_size=num_nodes * per_node,
                    launcher="slurm",
                    job_id="9",
                    host=f"n{node}",
                )
            )
    return views


def test_consistent_views_pass():
    assert check_views(_views(), 10.0) == []


@pytest.mark.parametrize(
    "change, reduced, problem",
    [
        ({"rank": 0}, 10.0, "global ranks [0, 0, 2, 3]"),
        ({"world_size": 8}, 10.0, "ranks disagree on world_size"),
        ({"launcher": "torchrun"}, 10.0, "ranks disagree on launcher"),
        ({"local_rank": 0}, 10.0, "node 0: local ranks [0, 0]"),
        ({"host": "elsewhere"}, 10.0, "node 0 spans hosts"),
        ({"node_rank": 1, "local_rank": 2}, 10.0, "node 1: local ranks [0, 1, 2]"),
        ({}, 9.0, "all_reduce(rank + 1) = 9.0, expected 10.0"),
    ],
)
def test_inconsistent_views_are_reported(change, reduced, problem):
    views = _views()
    views[1].update(change)
    problems = check_views(views, reduced)
    assert any(problem in p for p in problems), problems


def test_steps_need_a_run_dir(capsys):
    assert selftest.main(["--steps", "3"]) == 2
    assert "--run-dir: required with --steps" in capsys.readouterr().err


def _start(rank: int, port: int, run_dir, steps: int) -> subprocess.Popen:
    environ = dict(
        os.environ,
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    command = [sys.executable, "-m", "megatron_diffusion.parallel.selftest", "--backend", "gloo",
               "--steps", str(steps), "--step-seconds", "0.1", "--run-dir", str(run_dir)]
    return subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _run_pair(run_dir, steps, signal_rank1_at_step=None):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [_start(rank, port, run_dir, steps) for rank in range(2)]
    if signal_rank1_at_step is not None:
        progress = run_dir / selftest.PROGRESS_FILE
        deadline = time.monotonic() + 60
        while not (progress.exists() and int(progress.read_text().split()[1]) >= signal_rank1_at_step):
            assert time.monotonic() < deadline, "selftest made no progress"
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGUSR2)  # only rank 1 hears it
    outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return outputs


@pytest.mark.distributed
def test_preempted_on_one_rank_then_resumed(tmp_path):
    steps = 40
    outputs = _run_pair(tmp_path, steps, signal_rank1_at_step=2)
    assert "SELFTEST" in outputs[0] and '"ok": true' in outputs[0]
    assert (tmp_path / "PREEMPTED").exists()
    state = json.loads((tmp_path / selftest.STATE_FILE).read_text())
    stopped_at = state["step"]
    assert 2 <= stopped_at < steps
    lines = (tmp_path / selftest.SIGNALS_FILE).read_text().splitlines()
    records = [dict(field.split("=", 1) for field in line.split()) for line in lines]
    # Both ranks stopped after the same step, though only rank 1 received the signal.
    assert [(r["rank"], r["step"], r["signal"]) for r in sorted(records, key=lambda r: r["rank"])] == [
        ("0", str(stopped_at), "none"),
        ("1", str(stopped_at), "SIGUSR2"),
    ]

    _run_pair(tmp_path, steps)  # the "requeued" run: resumes from the counter
    assert not (tmp_path / "PREEMPTED").exists()
    state = json.loads((tmp_path / selftest.STATE_FILE).read_text())
    assert state["step"] == steps
    assert [(r["start_step"], r["end_step"], r["preempted"]) for r in state["runs"]] == [
        (0, stopped_at, True),
        (stopped_at, steps, False),
    ]
