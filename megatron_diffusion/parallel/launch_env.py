"""Where am I in the job? Rank, world size and rendezvous address from the launcher's environment.

Three launchers are recognised, in this order: ``torchrun`` (``RANK`` set: its ``env://``
variables, also inside a SLURM job that runs one torchrun per node, whose SLURM variables
describe the agent, not the worker); ``slurm`` (``SLURM_STEP_ID`` set: a task of an ``srun`` step
with one task per rank; the rendezvous is the step's first host and ``port_for_job``, so every
task derives the same address with no communication; ``MASTER_ADDR``/``MASTER_PORT`` override
them); ``single`` (neither: one process; the batch shell's ``SLURM_PROCID=0`` without a step is
one process, not rank 0 of a job that would wait forever for its peers). ``SLURM_JOB_ID`` and
``SLURM_RESTART_COUNT`` are recorded under every launcher. docs/slurm.md lists every variable
read.
"""

import datetime
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Self

from megatron_diffusion.errors import UsageError, check_choice
from megatron_diffusion.parallel.hostlist import expand_hostlist, expand_tasks_per_node

LAUNCHERS = ("single", "torchrun", "slurm")
BASE_PORT = 20000
NUM_PORTS = 12000


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in the job, as the launcher described it."""

    rank: int
    """Global rank, 0 .. world_size - 1."""
    world_size: int
    """Number of processes in the job (one per accelerator)."""
    local_rank: int
    """Rank among the processes on this node; the CUDA device index."""
    local_world_size: int
    """Number of processes on this node."""
    node_rank: int
    """Index of this node, 0 .. num_nodes - 1."""
    num_nodes: int
    """Number of nodes in the job (step)."""
    master_addr: str
    """Host of the rank-0 rendezvous store."""
    master_port: int
    """TCP port of the rendezvous store; 0 for a single process (in-process store, no port)."""
    launcher: str
    """How the process was started: 'single', 'torchrun' or 'slurm'."""
    job_id: str | None
    """SLURM job id (stable across requeues), or None outside SLURM."""
    restart_count: int
    """How many times SLURM requeued this job (SLURM_RESTART_COUNT); 0 on the first run."""
    elastic_restart_count: int = 0
    """How many times torchrun restarted its workers in this job (TORCHELASTIC_RESTART_COUNT)."""

    def validate(self) -> Self:
        check_choice("launcher", self.launcher, LAUNCHERS)
        _check_index("rank", self.rank, "world_size", self.world_size)
        _check_index("local_rank", self.local_rank, "local_world_size", self.local_world_size)
        _check_index("node_rank", self.node_rank, "num_nodes", self.num_nodes)
        if self.local_world_size > self.world_size:
            raise UsageError(
                f"local_world_size: got {self.local_world_size}, expected <= world_size "
                f"({self.world_size})"
            )
        if not 0 <= self.master_port < 65536:
            raise UsageError(f"master_port: got {self.master_port}, expected 0 .. 65535")
        return self

    @property
    def is_main(self) -> bool:
        """True on global rank 0, the rank that logs and writes run-level files."""
        return self.rank == 0

    def as_dict(self) -> dict:
        return asdict(self)


def _check_index(name: str, value: int, size_name: str, size: int) -> None:
    if size < 1:
        raise UsageError(f"{size_name}: got {size}, expected >= 1")
    if not 0 <= value < size:
        raise UsageError(f"{name}: got {value}, expected 0 .. {size - 1} ({size_name}={size})")


def port_for_job(job_id: str) -> int:
    """Rendezvous port of a SLURM job: 20000 + job_id % 12000 (the sbatch scripts agree).

    Deterministic, so every task, and the same job after a requeue, derives it alone. The range
    20000-31999 lies above the well-known ports and below Linux's ephemeral range (32768+), so
    no client socket holds it; two jobs sharing a first node collide only when their ids are
    12000 apart. Set MASTER_PORT to choose another.
    """
    if not job_id.isdigit():
        raise UsageError(f"SLURM_JOB_ID: got {job_id!r}, expected a number")
    return BASE_PORT + int(job_id) % NUM_PORTS


def _get(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name)
    if value is None or value.strip() == "":
        raise UsageError(f"{name}: not set, but the launcher's other variables are")
    return value.strip()


def _get_int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    if default is not None and not environ.get(name, "").strip():
        return default
    value = _get(environ, name)
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{name}: got {value!r}, expected an integer") from None
    if number < 0:
        raise UsageError(f"{name}: got {value!r}, expected an integer >= 0")
    return number


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if environ.get(n, "").strip()), None)


def _job_fields(environ: Mapping[str, str]) -> dict:
    job_id = environ.get("SLURM_JOB_ID", "").strip() or None
    return {
        "job_id": job_id,
        "restart_count": _get_int(environ, "SLURM_RESTART_COUNT", default=0),
        "elastic_restart_count": _get_int(environ, "TORCHELASTIC_RESTART_COUNT", default=0),
    }


def _from_torchrun(environ: Mapping[str, str]) -> LaunchEnv:
    world_size = _get_int(environ, "WORLD_SIZE")
    local_world_size = _get_int(environ, "LOCAL_WORLD_SIZE")
    rank = _get_int(environ, "RANK")
    if "GROUP_RANK" in environ:
        node_rank = _get_int(environ, "GROUP_RANK")
    else:  # a hand-written env:// launch: assume equal processes per node
        node_rank = rank // max(local_world_size, 1)
    if "GROUP_WORLD_SIZE" in environ:
        num_nodes = _get_int(environ, "GROUP_WORLD_SIZE")
    else:
        num_nodes = -(-world_size // max(local_world_size, 1))
    return LaunchEnv(
        rank=rank,
        world_size=world_size,
        local_rank=_get_int(environ, "LOCAL_RANK"),
        local_world_size=local_world_size,
        node_rank=node_rank,
        num_nodes=num_nodes,
        master_addr=_get(environ, "MASTER_ADDR"),
        master_port=_get_int(environ, "MASTER_PORT"),
        launcher="torchrun",
        **_job_fields(environ),
    )


def _from_slurm(environ: Mapping[str, str]) -> LaunchEnv:
    nodelist_var = _first(environ, ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"))
    if nodelist_var is None:
        raise UsageError("SLURM_JOB_NODELIST: not set, but SLURM_STEP_ID is (an srun step)")
    hosts = expand_hostlist(environ[nodelist_var], source=nodelist_var)
    node_rank = _get_int(environ, "SLURM_NODEID")
    if node_rank >= len(hosts):
        raise UsageError(
            f"SLURM_NODEID: got {node_rank}, but {nodelist_var} names {len(hosts)} host(s)"
        )
    tasks_var = _first(environ, ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"))
    if tasks_var is None:
        raise UsageError("SLURM_STEP_TASKS_PER_NODE: not set, nor SLURM_NTASKS_PER_NODE")
    tasks_per_node = expand_tasks_per_node(environ[tasks_var], source=tasks_var)
    if tasks_var == "SLURM_NTASKS_PER_NODE":  # one number for every node
        local_world_size = tasks_per_node[0]
    elif len(tasks_per_node) != len(hosts):
        raise UsageError(
            f"{tasks_var}: got {environ[tasks_var]!r} for {len(tasks_per_node)} node(s), "
            f"but {nodelist_var} names {len(hosts)}"
        )
    else:
        local_world_size = tasks_per_node[node_rank]
    job_fields = _job_fields(environ)
    if "MASTER_PORT" in environ:
        master_port = _get_int(environ, "MASTER_PORT")
    else:
        master_port = port_for_job(_get(environ, "SLURM_JOB_ID"))
    world_var = _first(environ, ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"))
    return LaunchEnv(
        rank=_get_int(environ, "SLURM_PROCID"),
        world_size=_get_int(environ, world_var or "SLURM_NTASKS"),
        local_rank=_get_int(environ, "SLURM_LOCALID"),
        local_world_size=local_world_size,
        node_rank=node_rank,
        num_nodes=len(hosts),
        master_addr=environ.get("MASTER_ADDR", "").strip() or hosts[0],
        master_port=master_port,
        launcher="slurm",
        **job_fields,
    )


def _single(environ: Mapping[str, str]) -> LaunchEnv:
    return LaunchEnv(
        rank=0,
        world_size=1,
        local_rank=0,
        local_world_size=1,
        node_rank=0,
        num_nodes=1,
        master_addr=environ.get("MASTER_ADDR", "").strip() or "127.0.0.1",
        master_port=_get_int(environ, "MASTER_PORT", default=0),
        launcher="single",
        **_job_fields(environ),
    )


def detect_launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read the launcher's variables (``os.environ`` by default) into a validated ``LaunchEnv``.

    Raises ``UsageError`` naming the variable when one is missing or malformed.
    """
    environ = os.environ if environ is None else environ
    if environ.get("RANK", "").strip():
        env = _from_torchrun(environ)
    elif environ.get("SLURM_STEP_ID", "").strip():
        env = _from_slurm(environ)
    else:
        env = _single(environ)
    env.validate()
    return env


def start_process_group(
    env: LaunchEnv | None = None,
    backend: str | None = None,
    timeout: datetime.timedelta = datetime.timedelta(minutes=30),
) -> LaunchEnv:
    """Start torch.distributed's default process group for ``env`` (detected when None).

    Exports MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE, so libraries
    that read them (megatron-core, wandb) agree with us. ``backend`` defaults to nccl when CUDA is
    present, else gloo; with nccl the CUDA device is set to ``local_rank`` first. A single process
    without MASTER_PORT uses an in-process store: no port, so many can run on one machine.
    """
    import torch
    import torch.distributed as dist

    env = detect_launch_env() if env is None else env
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    check_choice("backend", backend, ("nccl", "gloo"))
    if dist.is_initialized():
        raise UsageError("start_process_group: torch.distributed is already initialised")
    os.environ.update(
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=str(env.master_port),
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world_size),
        LOCAL_RANK=str(env.local_rank),
        LOCAL_WORLD_SIZE=str(env.local_world_size),
    )
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    if env.world_size == 1 and env.master_port == 0:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    else:
        dist.init_process_group(
            backend, init_method="env://", rank=env.rank, world_size=env.world_size, timeout=timeout
        )
    return env
