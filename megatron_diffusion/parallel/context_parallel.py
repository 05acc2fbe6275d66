"""Context parallelism: the sequence maths of ``parallel.context_parallel_size`` (CP).

Ours is the all-to-all kind (DeepSpeed-Ulysses), not Transformer Engine's ring attention. Each of
the ``cp`` ranks holds one contiguous slice of every row's ``S`` model tokens (``S = 2L`` in block
mode); embeddings, MLPs, norms, the output layer and the loss run on that slice, and in attention
two all-to-alls (``model/ulysses.py``) turn it into a head slice of the whole sequence, so the
core attention applies the unsplit row's full mask. Positions, document ids and block ids come
from the global row before slicing, so RoPE and masks are exactly one process's. The loss is a
sum per token over the slices (``loss/elbo.py``). The constraints are
checked at config time (``RunConfig._check_context_parallel``). docs/context_parallel.md has the
layout, the load balance and the figures.
"""

import torch


def _state():
    from megatron.core import parallel_state

    return parallel_state if parallel_state.model_parallel_is_initialized() else None


def world_size() -> int:
    """CP ranks per model replica (1 before megatron's groups exist)."""
    ps = _state()
    return 1 if ps is None else ps.get_context_parallel_world_size()


def rank() -> int:
    ps = _state()
    return 0 if ps is None else ps.get_context_parallel_rank()


def group():
    return _state().get_context_parallel_group()


def local_span(seq_len: int, cp_rank: int, cp_size: int) -> tuple[int, int]:
    """``[start, stop)`` of the model tokens rank ``cp_rank`` holds."""
    if seq_len % cp_size:
        raise ValueError(f"{seq_len} model tokens do not split over {cp_size} CP ranks")
    n = seq_len // cp_size
    return cp_rank * n, (cp_rank + 1) * n


def shard_inputs(kwargs: dict) -> dict:
    """This CP rank's slice of ``input_ids``/``position_ids`` (``[b, S]``); the attention mask
    stays whole (it is applied to the gathered sequence). Identity without CP."""
    cp = world_size()
    if cp == 1:
        return kwargs
    start, stop = local_span(kwargs["input_ids"].shape[1], rank(), cp)
    out = dict(kwargs)
    for name in ("input_ids", "position_ids"):
        out[name] = kwargs[name][:, start:stop]
    return out


def gather_sequence(local_BSV: torch.Tensor) -> torch.Tensor:
    """Concatenate the CP ranks' slices along dim 1 (tests and tools; no gradient)."""
    import torch.distributed as dist

    cp = world_size()
    if cp == 1:
        return local_BSV
    parts = [torch.empty_like(local_BSV) for _ in range(cp)]
    dist.all_gather(parts, local_BSV.contiguous(), group=group())
    return torch.cat(parts, dim=1)

