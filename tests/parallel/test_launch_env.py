"""Launcher detection from environment dictionaries, and start_process_group on one and two
processes."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_diffusion.errors import UsageError
from megatron_diffusion.parallel.launch_env import (
    LaunchEnv,
    detect_launch_env,
    start_process_group,
    port_for_job,
)

# A task of `srun -N2 --ntasks-per-node=8` on gpu-[003-004], as SLURM 22.05 exports it.
SLURM_STEP = {
    "SLURM_JOB_ID": "123456",
    "SLURM_JOB_NAME": "cpt",
    "SLURM_JOB_NODELIST": "gpu-[003-004]",
    "SLURM_NODELIST": "gpu-[003-004]",
    "SLURM_STEP_NODELIST": "gpu-[003-004]",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "9",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NTASKS": "16",
    "SLURM_STEP_NUM_TASKS": "16",
    "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
    "SLURM_TASKS_PER_NODE": "8(x2)",
}

# A worker of `torchrun --nnodes 2 --nproc-per-node 4` on the second node.
TORCHRUN = {
    "RANK": "6",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "2",
    "LOCAL_WORLD_SIZE": "4",
    "GROUP_RANK": "1",
    "GROUP_WORLD_SIZE": "2",
    "MASTER_ADDR": "gpu-003",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RESTART_COUNT": "1",
    "TORCHELASTIC_RUN_ID": "cpt",
}


def test_single_process():
    env = detect_launch_env({})
    assert env == LaunchEnv(0, 1, 0, 1, 0, 1, "127.0.0.1", 0, "single", None, 0, 0)
    assert env.is_main


def test_slurm_per_rank_step():
    env = detect_launch_env(SLURM_STEP)
    assert env == LaunchEnv(
        rank=9,
        world_size=16,
        local_rank=1,
        local_world_size=8,
        node_rank=1,
        num_nodes=2,
        master_addr="gpu-003",
        master_port=20000 + 123456 % 12000,
        launcher="slurm",
        job_id="123456",
        restart_count=0,
    )
    assert not env.is_main


def test_slurm_uneven_tasks_per_node_and_requeue():
    environ = dict(
        SLURM_STEP,
        SLURM_STEP_NODELIST="a[1-2]-ib,b7",
        SLURM_STEP_TASKS_PER_NODE="3(x2),1",
        SLURM_STEP_NUM_TASKS="7",
        SLURM_NODEID="2",
        SLURM_PROCID="6",
        SLURM_LOCALID="0",
        SLURM_RESTART_COUNT="2",
    )
    env = detect_launch_env(environ)
    assert (env.num_nodes, env.node_rank, env.local_world_size) == (3, 2, 1)
    assert (env.world_size, env.master_addr, env.restart_count) == (7, "a1-ib", 2)


def test_slurm_ntasks_per_node_fallback():
    environ = {k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_TASKS_PER_NODE"}
    environ["SLURM_NTASKS_PER_NODE"] = "8"
    assert detect_launch_env(environ).local_world_size == 8


def test_master_addr_and_port_override_slurm():
    env = detect_launch_env(dict(SLURM_STEP, MASTER_ADDR="10.0.0.1", MASTER_PORT="31000"))
    assert (env.master_addr, env.master_port) == ("10.0.0.1", 31000)


def test_batch_shell_is_a_single_process():
    # The batch script sees SLURM_PROCID=0 and SLURM_NTASKS but no step: not rank 0 of 16.
    environ = {k: v for k, v in SLURM_STEP.items() if not k.startswith("SLURM_STEP")}
    environ.update(SLURM_PROCID="0", SLURM_RESTART_COUNT="1")
    env = detect_launch_env(environ)
    assert (env.launcher, env.world_size, env.job_id, env.restart_count) == ("single", 1, "123456", 1)


def test_torchrun():
    env = detect_launch_env(TORCHRUN)
    assert env == LaunchEnv(6, 8, 2, 4, 1, 2, "gpu-003", 29500, "torchrun", None, 0, 1)


def test_torchrun_inside_slurm_wins_and_keeps_the_job():
    # One srun task per node runs torchrun: SLURM_PROCID is the node, RANK the worker.
    agent_view = dict(SLURM_STEP, SLURM_PROCID="1", SLURM_NTASKS="2", SLURM_RESTART_COUNT="3")
    env = detect_launch_env(dict(agent_view, **TORCHRUN))
    assert (env.launcher, env.rank, env.world_size) == ("torchrun", 6, 8)
    assert (env.job_id, env.restart_count, env.elastic_restart_count) == ("123456", 3, 1)


def test_hand_written_env_launch_derives_nodes():
    environ = {k: v for k, v in TORCHRUN.items() if not k.startswith("GROUP_")}
    env = detect_launch_env(environ)
    assert (env.node_rank, env.num_nodes) == (1, 2)


@pytest.mark.parametrize(
    "base, change, message",
    [
        (TORCHRUN, {"LOCAL_WORLD_SIZE": None}, "LOCAL_WORLD_SIZE: not set"),
        (TORCHRUN, {"MASTER_ADDR": ""}, "MASTER_ADDR: not set"),
        (TORCHRUN, {"RANK": "one"}, "RANK: got 'one', expected an integer"),
        (TORCHRUN, {"RANK": "8"}, "rank: got 8, expected 0 .. 7"),
        (TORCHRUN, {"WORLD_SIZE": "0"}, "world_size: got 0"),
        (TORCHRUN, {"MASTER_PORT": "70000"}, "master_port: got 70000"),
        (TORCHRUN, {"LOCAL_RANK": "-1"}, "LOCAL_RANK: got '-1'"),
        (SLURM_STEP, {"SLURM_PROCID": "x"}, "SLURM_PROCID: got 'x'"),
        (SLURM_STEP, {"SLURM_PROCID": "16"}, "rank: got 16"),
        (SLURM_STEP, {"SLURM_LOCALID": None}, "SLURM_LOCALID: not set"),
        (SLURM_STEP, {"SLURM_NODEID": "2"}, "SLURM_NODEID: got 2, but SLURM_STEP_NODELIST names 2"),
        (SLURM_STEP, {"SLURM_STEP_NODELIST": "gpu-[004-003]"}, "SLURM_STEP_NODELIST: range"),
        (SLURM_STEP, {"SLURM_STEP_TASKS_PER_NODE": "8"}, "SLURM_STEP_TASKS_PER_NODE: got '8' for 1"),
        (SLURM_STEP, {"SLURM_STEP_TASKS_PER_NODE": "8(x)"}, "SLURM_STEP_TASKS_PER_NODE: bad entry"),
        (SLURM_STEP, {"SLURM_JOB_ID": "12a"}, "SLURM_JOB_ID: got '12a'"),
        (SLURM_STEP, {"SLURM_RESTART_COUNT": "?"}, "SLURM_RESTART_COUNT: got '?'"),
        ({}, {"MASTER_PORT": "port"}, "MASTER_PORT: got 'port'"),
    ],
)
def test_bad_variables_name_themselves(base, change, message):
    environ = dict(base)
    for key, value in change.items():
        if value is None:
            environ.pop(key)
        else:
            environ[key] = value
    with pytest.raises(UsageError) as info:
        detect_launch_env(environ)
    assert message in str(info.value)


def test_no_node_list_in_a_step():
    environ = {k: v for k, v in SLURM_STEP.items() if "NODELIST" not in k}
    with pytest.raises(UsageError, match="SLURM_JOB_NODELIST: not set"):
        detect_launch_env(environ)


def test_port_for_job_stays_below_ephemeral_range():
    ports = {port_for_job(str(j)) for j in range(0, 50000, 7)}
    assert min(ports) == 20000 and max(ports) <= 31999 < 32768
    assert port_for_job("5") == port_for_job("5") == 20005


@pytest.fixture
def clean_launch_vars(monkeypatch):
    """start_process_group exports the launch variables: undo that after the test."""
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_start_process_group_single_process_uses_no_port(clean_launch_vars):
    env = start_process_group(detect_launch_env({}), backend="gloo")
    try:
        value = torch.tensor([3.0])
        dist.all_reduce(value)
        assert value.item() == 3.0 and dist.get_world_size() == 1
        assert os.environ["RANK"] == "0"
        with pytest.raises(UsageError, match="already initialised"):
            start_process_group(env, backend="gloo")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_task(procid: int, port: int, results) -> None:
    environ = dict(
        SLURM_STEP,
        SLURM_STEP_NODELIST="localhost",
        SLURM_STEP_TASKS_PER_NODE="2",
        SLURM_STEP_NUM_TASKS="2",
        SLURM_NODEID="0",
        SLURM_PROCID=str(procid),
        SLURM_LOCALID=str(procid),
        MASTER_PORT=str(port),
    )
    env = start_process_group(detect_launch_env(environ), backend="gloo")
    value = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(value)
    results[env.rank] = value.item()
    dist.destroy_process_group()


@pytest.mark.distributed
def test_start_process_group_two_slurm_tasks():
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        port = _free_port()
        procs = [ctx.Process(target=_slurm_task, args=(i, port, results)) for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0, 0]
        assert dict(results) == {0: 3.0, 1: 3.0}
