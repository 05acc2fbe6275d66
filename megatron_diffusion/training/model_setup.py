"""Build the model chunks of this rank and wrap them for training (megatron DDP).

Mirrors what Megatron-LM's ``setup_model_and_optimizer`` does for the pieces we use: one chunk per
virtual pipeline stage, megatron's ``DistributedDataParallel`` (contiguous gradient buffers,
optional distributed optimizer), and the schedule hooks on the model config (per-token loss,
``finalize_model_grads``, no-sync for gradient accumulation).
"""

from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed.finalize_model_grads import finalize_model_grads

from megatron_diffusion.model.config import ModelConfig
from megatron_diffusion.model.gpt import build_model_chunks


def wrap_ddp(chunks, *, use_distributed_optimizer: bool = False, overlap_grad_reduce: bool = False):
    tcfg = chunks[0].config
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlap_grad_reduce,
        use_distributed_optimizer=use_distributed_optimizer,
        check_for_nan_in_grad=False,
        bucket_size=None if not overlap_grad_reduce else 40_000_000,
    )
    wrapped = [
        DistributedDataParallel(config=tcfg, ddp_config=ddp_config, module=chunk,
                                disable_bucketing=i > 0)
        for i, chunk in enumerate(chunks)
    ]
    tcfg.calculate_per_token_loss = True
    tcfg.finalize_model_grads_func = finalize_model_grads
    tcfg.grad_scale_func = None
    no_sync = [m.no_sync for m in wrapped]
    tcfg.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
    return wrapped


def build_training_model(model_cfg: ModelConfig, tcfg, **ddp_kwargs):
    """Model chunks for this rank wrapped in DDP; ``unwrap(chunks)`` gives the bare models."""
    tcfg.calculate_per_token_loss = True
    return wrap_ddp(build_model_chunks(model_cfg, tcfg), **ddp_kwargs)


def unwrap(chunks):
    return [getattr(c, "module", c) for c in chunks]
