"""Finiteness checks that every rank agrees on: gradients before a step, weights before a save.

A finite loss can come with a NaN/inf gradient (an overflow in the backward pass); applied, it
makes every weight it touches non-finite (clipping multiplies all gradients by ``clip / nan``).
``grads_finite`` runs before ``optimizer.step()``: the trainer skips the step when it is False.
``weights_finite`` runs before a checkpoint is written: non-finite weights are never saved, so
keep-last pruning can never delete the last finite checkpoint.

Each check is one pass over the tensors with a device-side flag and one all-reduce (MAX) over
the whole world, so TP/PP ranks holding different shards and DP ranks decide the same way.
"""

import torch
import torch.distributed as dist

from megatron_diffusion.parallel.process_groups import host_collective


def _agree_all_finite(tensors) -> bool:
    flag = None
    for t in tensors:
        bad = (~torch.isfinite(t)).any()
        flag = bad if flag is None else flag | bad
    if flag is None:
        flag = torch.tensor(False)
    flag = flag.to(torch.int32).reshape(1)
    if dist.is_available() and dist.is_initialized():
        host_collective(dist.all_reduce, flag, op=dist.ReduceOp.MAX)
    return not bool(flag.item())


def _grads(chunks):
    for chunk in chunks:
        for p in chunk.parameters():
            g = getattr(p, "main_grad", None)
            g = p.grad if g is None else g
            if g is not None:
                yield g


def grads_finite(chunks) -> bool:
    """True on every rank when no rank holds a non-finite gradient (megatron's ``main_grad``)."""
    return _agree_all_finite(_grads(chunks))


def weights_finite(chunks) -> bool:
    """True on every rank when every rank's parameters are finite."""
    return _agree_all_finite(p.detach() for c in chunks for p in c.parameters())
