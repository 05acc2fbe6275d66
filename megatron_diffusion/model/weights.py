"""Full (unsharded) state dicts <-> this rank's TP/PP shard of the model.

A *full* state dict uses the names of a one-process model (``decoder.layers.{global i}.``) and
unpadded-by-TP tensors, so it is independent of the parallel layout. This is the common currency
of resharding, HF conversion and the TP/PP equivalence tests:

* ``local_to_full`` gathers this rank's tensor-parallel shards into full tensors (the caller
  merges the pipeline stages, each of which holds different layers);
* ``load_full`` slices what this rank owns out of a full state dict (any mapping, so a lazy
  safetensors view streams tensor by tensor).

Tensor-parallel layouts (megatron-core local and TE specs): column-parallel weights split dim 0,
row-parallel dim 1, vocabulary-parallel embedding/output split the (padded) vocabulary. The SwiGLU
``linear_fc1`` is ``[gate; up]`` on every rank, so its full form is ``[gate_0..gate_n;
up_0..up_n]``, not the plain concatenation of the shards.
"""

import re

import torch
import torch.distributed as dist
from megatron.core import parallel_state

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def _global_name(name: str, chunk) -> str:
    m = _LAYER.match(name)
    if not m:
        return name
    layer = chunk.decoder.layers[int(m.group(1))]
    return f"decoder.layers.{layer.layer_number - 1}." + name[m.end():]


def _is_glu_fc1(name: str, chunk) -> bool:
    return name.endswith("mlp.linear_fc1.weight") and chunk.config.gated_linear_unit


def _tp_dim(param) -> int | None:
    if getattr(param, "tensor_model_parallel", False):
        return param.partition_dim
    return None


def local_names(chunks) -> dict[str, tuple[int, str, torch.Tensor]]:
    """``global name -> (chunk index, local name, parameter)`` for this rank (params + buffers
    that are part of the checkpoint)."""
    out = {}
    for ci, chunk in enumerate(chunks):
        for name, p in chunk.state_dict(keep_vars=True).items():
            if name.endswith("_extra_state") or not torch.is_tensor(p):
                continue
            out[_global_name(name, chunk)] = (ci, name, p)
    return out


def _gather_tp(t: torch.Tensor, dim: int, glu: bool) -> torch.Tensor:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1:
        return t.detach().clone()
    parts = [torch.empty_like(t) for _ in range(tp)]
    dist.all_gather(parts, t.detach().contiguous(),
                    group=parallel_state.get_tensor_model_parallel_group())
    if glu:
        halves = [p.chunk(2, dim=0) for p in parts]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(parts, dim=dim)


def _slice_tp(full: torch.Tensor, dim: int, glu: bool) -> torch.Tensor:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    if glu:
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]], dim=0)
    return full.chunk(tp, dim=dim)[rank]


def local_to_full(chunks, grads: bool = False) -> dict[str, torch.Tensor]:
    """This rank's layers as full tensors (TP gathered). ``grads=True``: their ``.main_grad``
    (megatron DDP) or ``.grad`` instead of the values."""
    out = {}
    for gname, (ci, name, p) in local_names(chunks).items():
        t = p
        if grads:
            g = getattr(p, "main_grad", None)
            t = g if g is not None else p.grad
            if t is None:
                continue
        dim = _tp_dim(p)
        out[gname] = t.detach().clone() if dim is None else _gather_tp(
            t, dim, _is_glu_fc1(name, chunks[ci]))
    return out


def full_over_pipeline_stages(chunks, grads: bool = False) -> dict[str, torch.Tensor]:
    """``local_to_full`` merged over the pipeline stages (every rank gets the whole model)."""
    local = local_to_full(chunks, grads=grads)
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if pp == 1:
        return local
    parts = [None] * pp
    dist.all_gather_object(parts, local, group=parallel_state.get_pipeline_model_parallel_group())
    merged = {}
    for part in parts:
        for k, v in part.items():
            merged.setdefault(k, v)  # tied embeddings: first and last pipeline stage, same values
    return merged


@torch.no_grad()
def load_full(chunks, full, strict: bool = True) -> None:
    """Copy this rank's slice of every tensor in ``full`` (a mapping of full tensors) into the
    model. ``strict``: every local tensor must be present with the right full shape."""
    for gname, (ci, name, p) in local_names(chunks).items():
        if gname not in full:
            if strict:
                raise KeyError(f"missing tensor {gname!r} in the full state dict")
            continue
        src = full[gname]
        dim = _tp_dim(p)
        shard = src if dim is None else _slice_tp(src, dim, _is_glu_fc1(name, chunks[ci]))
        if tuple(shard.shape) != tuple(p.shape):
            raise ValueError(f"tensor {gname!r}: shape {tuple(src.shape)} does not fit this "
                             f"model (local shard {tuple(p.shape)}, expected "
                             f"{tuple(shard.shape)})")
        p.copy_(shard.to(p.dtype))


@torch.no_grad()
def seeded_init(chunks, seed: int, std: float) -> None:
    """Initialise every tensor from ``(seed, its global name)``: the same model for every
    TP/PP layout (a deterministic debug run compares layouts; megatron's own init draws pipeline
    stages from one RNG stream, so pipeline stage 1's layers differ from a one-process model's).

    Each rank draws the full tensor and keeps its slice: fine for debug-sized models, too slow
    for billions of parameters (use megatron's init there).
    """
    import zlib

    tp = parallel_state.get_tensor_model_parallel_world_size()
    for gname, (ci, name, p) in local_names(chunks).items():
        dim = _tp_dim(p)
        shape = list(p.shape)
        if dim is not None:
            shape[dim] *= tp
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(gname.encode()))
        if gname.endswith("layernorm.weight") or gname.endswith("final_layernorm.weight"):
            full = torch.ones(shape)
        elif gname.endswith(".bias"):
            full = torch.zeros(shape)
        else:
            full = torch.randn(shape, generator=g) * std
        shard = full if dim is None else _slice_tp(full, dim, _is_glu_fc1(name, chunks[ci]))
        p.copy_(shard.to(p.dtype))
