"""Start torch.distributed and megatron's model-parallel groups, on GPU (nccl) or CPU (gloo).

On a machine without CUDA the CPU runtime (``cpu_runtime``) is activated first. Rank, world size
and rendezvous come from ``launch_env`` (torchrun, SLURM, or a single process with an in-process
store), so the same code path serves the CPU demo, tests and multi-node runs.
"""

from datetime import timedelta

import torch.distributed as dist

from megatron_diffusion.parallel import cpu_runtime
from megatron_diffusion.errors import UsageError


DEFAULT_COLLECTIVE_TIMEOUT_S = 1800.0
"""For callers that pass no timeout (conversion, sampling, tests): torch's own default, 30
minutes, as before ``parallel.collective_timeout_s`` existed; the trainer passes the field."""


def ensure_distributed(collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> None:
    """Start torch.distributed from the launcher's environment (torchrun, SLURM, or one
    process; ``launch_env.start_process_group``) unless it is already started, after activating
    the CPU runtime when CUDA is absent (gloo then). A collective that waits longer than
    ``collective_timeout_s`` for a peer fails (gloo and NCCL)."""
    if dist.is_initialized():
        return
    cpu_runtime.activate()
    from megatron_diffusion.parallel.launch_env import start_process_group

    start_process_group(timeout=timedelta(seconds=collective_timeout_s))


def initialize_model_parallel(tensor_model_parallel_size: int = 1,
                              pipeline_model_parallel_size: int = 1,
                              virtual_pipeline_model_parallel_size: int | None = None,
                              seed: int = 1234, context_parallel_size: int = 1,
                              collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> None:
    """Megatron's TP/PP/CP/DP groups over the default group (started first if needed); every
    group's collectives time out after ``collective_timeout_s`` (``parallel.collective_timeout_s``)."""
    from megatron.core import parallel_state

    ensure_distributed(collective_timeout_s)
    world = dist.get_world_size()
    model_parallel = (tensor_model_parallel_size * pipeline_model_parallel_size
                      * context_parallel_size)
    if world % model_parallel:
        raise UsageError(
            f"parallel: tensor_model_parallel_size ({tensor_model_parallel_size}) x "
            f"pipeline_model_parallel_size ({pipeline_model_parallel_size}) x "
            f"context_parallel_size ({context_parallel_size}) = {model_parallel} "
            f"must divide the world size ({world})")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        context_parallel_size=context_parallel_size,
        distributed_timeout_minutes=collective_timeout_s / 60,
    )
    cpu_runtime.model_parallel_manual_seed(seed)


def destroy() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def host_collective(collective, tensor, **kwargs):
    """``collective(tensor, **kwargs)`` (``dist.all_reduce``, ``dist.broadcast``) in place, on
    a tensor wherever it lives: under NCCL a host tensor travels through the GPU (NCCL takes
    only device tensors)."""
    if tensor.is_cuda or dist.get_backend(kwargs.get("group")) != "nccl":
        collective(tensor, **kwargs)
        return tensor
    import torch

    on_device = tensor.to(torch.cuda.current_device())
    collective(on_device, **kwargs)
    tensor.copy_(on_device.cpu())
    return tensor
