"""Optional GPU dependencies, imported in this one place.

Transformer Engine (fused layers, FP8) and FlashAttention need CUDA. DeepSpeed provides the
Ulysses all-to-all attention behind ``parallel.context_parallel_size > 1`` (``deepspeed_ulysses``;
it also runs on CPU over gloo, with ``DS_ACCELERATOR=cpu`` set here when CUDA is absent). They are
extras (``pip install 'megatron-diffusion[te]'``, ``DS_BUILD_OPS=0 pip install
'megatron-diffusion[deepspeed]'``); asking for them without the package fails at config
time with a message that says how to install it. This matters for FP8 in particular: megatron-core
accepts ``TransformerConfig(fp8=...)`` without TE and then silently trains in BF16.
"""

import functools
import importlib.util

from megatron_diffusion.errors import UsageError

TE_INSTALL_HINT = (
    "install Transformer Engine on a CUDA machine: pip install 'megatron-diffusion[te]' "
    "(transformer-engine[pytorch]>=2.9,<2.12 for megatron-core 0.16), or set "
    "model.transformer_impl=local model.fp8=null"
)


def have_transformer_engine() -> bool:
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # installed but unusable (no CUDA / cuDNN)
        return False
    return True


def require_transformer_engine(what: str) -> None:
    """Fail with an actionable one-line error when TE is missing."""
    if not have_transformer_engine():
        raise UsageError(f"{what} needs Transformer Engine, which is not installed or cannot be "
                         f"imported on this machine; {TE_INSTALL_HINT}")


DEEPSPEED_INSTALL_HINT = (
    "install the deepspeed extra: DS_BUILD_OPS=0 pip install 'megatron-diffusion[deepspeed]' "
    "(deepspeed==0.19.8, pure Python, keeps the installed torch), or set "
    "parallel.context_parallel_size=1"
)


def have_deepspeed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def require_deepspeed(what: str) -> None:
    """Fail with an actionable one-line error when DeepSpeed is missing."""
    if not have_deepspeed():
        raise UsageError(f"{what} needs DeepSpeed (Ulysses sequence parallelism), which is not "
                         f"installed; {DEEPSPEED_INSTALL_HINT}")


@functools.cache
def deepspeed_ulysses():
    """``(DistributedAttention, deepspeed.comm)``, with DeepSpeed's communication layer bound to
    the already-initialised torch.distributed world (gloo on CPU, nccl on GPU). Once per process:
    every attention layer asks."""
    import os

    import torch
    import torch.distributed as dist

    require_deepspeed("parallel.context_parallel_size > 1")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed.comm as ds_comm
    from deepspeed.sequence.layer import DistributedAttention

    if not ds_comm.is_initialized():
        ds_comm.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False,
                                 verbose=False)
    return DistributedAttention, ds_comm
