"""Save and load ``dist_checkpointing`` model state without materialising the model twice.

Loading into a model and saving it keeps the SwiGLU weights twice (megatron's writer clones the
two ``linear_fc1`` halves, views of one parameter; its loader concatenates fresh halves).
Conversion avoids this. **Save** (``prebuilt_sharded_state_dict``): the model is built
uninitialised only for its sharded state dict (megatron's keys, shapes, offsets) and every entry
gets a fresh tensor holding the converted value, nothing a view. **Load** (``GroupLoader``): one
group (a transformer layer, or embedding / final norm / output layer) at a time into fresh
tensors, from whatever TP/PP layout the checkpoint was saved under. The format is the trainer's;
``training.checkpoint`` is used unchanged. docs/convert.md "Memory: streaming" has the figures.
"""

import dataclasses
import re
from collections.abc import Callable

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from megatron_diffusion.training.checkpoint import SHARDING_METADATA

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


class PrebuiltChunk:
    """Stands in for a model chunk in ``save_checkpoint``: returns a prepared sharded dict."""

    def __init__(self, sharded: dict):
        self._sharded = sharded

    def sharded_state_dict(self, metadata=None) -> dict:
        return self._sharded

    def parameters(self):
        """The prepared tensors (``save_checkpoint`` refuses to save non-finite weights)."""
        for entry in self._sharded.values():
            for sh in entry if isinstance(entry, list) else [entry]:
                if isinstance(sh, ShardedTensor):
                    yield sh.data


def _fit(sh: ShardedTensor, tensor: torch.Tensor, name: str) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(sh.local_shape):
        raise ValueError(f"tensor {name!r}: shape {tuple(tensor.shape)}, the model expects "
                         f"{tuple(sh.local_shape)}")
    return tensor.to(sh.dtype).contiguous()


def prebuilt_sharded_state_dict(model, pieces: Callable[[str], list[torch.Tensor]],
                                names, on_tensor: Callable[[str], None] | None = None) -> dict:
    """The model's sharded state dict with every tensor in ``names`` replaced by ``pieces(name)``
    (one full tensor, or the gate and up halves of a SwiGLU fc1), for a one-process model."""
    sharded = model.sharded_state_dict(metadata=SHARDING_METADATA)
    names = set(names)
    missing = names - set(sharded)
    if missing:
        raise ValueError(f"the model has no sharded tensors for {sorted(missing)[:3]}")
    for name in sorted(names):
        entry, parts = sharded[name], pieces(name)
        if isinstance(entry, ShardedTensorFactory):
            built = entry.build()
            if len(built) != len(parts):
                raise ValueError(f"tensor {name!r}: {len(parts)} pieces for {len(built)} shards")
            for sh, part in zip(built, parts):
                sh.data = _fit(sh, part, name)
            sharded[name] = built
        elif isinstance(entry, ShardedTensor):
            if len(parts) != 1:
                parts = [torch.cat(parts, dim=0)]
            entry.data = _fit(entry, parts[0], name)
        else:
            raise ValueError(f"tensor {name!r}: unexpected sharded entry {type(entry).__name__}")
        if on_tensor is not None:
            on_tensor(name)
    return sharded


def _group(name: str) -> str:
    m = _LAYER.match(name)
    return m.group(0) if m else name


class GroupLoader:
    """Full tensors of a one-process model from a checkpoint, loaded a group at a time."""

    def __init__(self, model, model_optim_dir: str):
        self.dir = model_optim_dir
        self.sharded = {name: entry for name, entry in
                        model.sharded_state_dict(metadata=SHARDING_METADATA).items()
                        if isinstance(entry, (ShardedTensor, ShardedTensorFactory))}
        self._group, self._tensors = None, {}

    def names(self) -> list[str]:
        return list(self.sharded)

    def __call__(self, name: str) -> torch.Tensor:
        group = _group(name)
        if group != self._group:
            self._tensors = {}  # drop the previous group before loading the next
            self._tensors = self._load([n for n in self.sharded if _group(n) == group])
            self._group = group
        return self._tensors[name]

    def _load(self, names: list[str]) -> dict[str, torch.Tensor]:
        sub = {}
        for n in names:
            entry = self.sharded[n]
            fresh = torch.empty(entry.data.shape, dtype=entry.data.dtype)
            if isinstance(entry, ShardedTensorFactory):
                sub[n] = [_standalone(sh) for sh in dataclasses.replace(entry, data=fresh).build()]
            else:
                if entry.allow_shape_mismatch:  # rows past the stored vocabulary stay zero
                    fresh.zero_()
                sub[n] = _standalone(dataclasses.replace(entry, data=fresh))
        # a sub-state-dict reads part of each stacked tensor: skip the whole-tensor access check
        loaded = dist_checkpointing.load(sub, self.dir, validate_access_integrity=False)
        out = {}
        for n in names:
            got, shape = loaded[n], self.sharded[n].data.shape
            if isinstance(got, list):  # factory pieces (SwiGLU gate, up) along the first own axis
                got = torch.cat(got, dim=got[0].dim() - len(shape))
            out[n] = got.reshape(shape)
        return out


def _standalone(sh: ShardedTensor) -> ShardedTensor:
    """The same shard with its prepended (layer) axes made explicit in the local shape.

    Layer tensors are stored stacked (``[num_layers, ...]``) and described with
    ``prepend_axis_num``; megatron then expects every layer's shard to be requested at once.
    Written as a ``[1, ...]`` slice of the stacked tensor, one layer loads on its own."""
    p = sh.prepend_axis_num
    if p == 0:
        return sh
    shape = (1,) * p + tuple(sh.local_shape)
    return dataclasses.replace(sh, data=sh.data.reshape(shape), local_shape=shape,
                               prepend_axis_num=0)
