"""Start torch.distributed and megatron's model-parallel groups, on GPU (nccl) or CPU (gloo).

On a machine without CUDA the CPU runtime (``cpu_runtime``) is activated first. A single process
without a launcher gets a one-rank group on a free loopback port, so the same code path serves the
CPU demo, tests and multi-node runs.
"""

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from megatron_diffusion.parallel import cpu_runtime
from megatron_diffusion.errors import UsageError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(timeout_minutes: int = 30) -> None:
    """``init_process_group`` from the launcher's environment (torchrun/SLURM) or as one rank."""
    if dist.is_initialized():
        return
    on_cpu = cpu_runtime.activate()
    backend = "gloo" if on_cpu else "nccl"
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        try:
            from megatron_diffusion.parallel.launch_env import detect_launch_env

            env = detect_launch_env()
            if env.launcher != "single":
                os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size),
                                  LOCAL_RANK=str(env.local_rank), MASTER_ADDR=env.master_addr,
                                  MASTER_PORT=str(env.master_port))
        except ImportError:
            pass
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    if not on_cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))


def initialize_model_parallel(tensor_model_parallel_size: int = 1,
                              pipeline_model_parallel_size: int = 1,
                              virtual_pipeline_model_parallel_size: int | None = None,
                              seed: int = 1234) -> None:
    from megatron.core import parallel_state

    init_distributed()
    world = dist.get_world_size()
    model_parallel = tensor_model_parallel_size * pipeline_model_parallel_size
    if world % model_parallel:
        raise UsageError(
            f"parallel: tensor_model_parallel_size ({tensor_model_parallel_size}) x "
            f"pipeline_model_parallel_size ({pipeline_model_parallel_size}) = {model_parallel} "
            f"must divide the world size ({world})")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
    )
    cpu_runtime.model_parallel_manual_seed(seed)


def destroy() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
