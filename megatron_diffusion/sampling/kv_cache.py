"""The sampler's KV cache: per-layer key/value buffers indexed by buffer column.

Core attention reaches a cache through ``model.attention.KVCache`` (one method, ``extend``);
this is the sampler's implementation. Rows of a batch advance through their blocks
independently (``sampler.py``), so a forward feeds each row its own chunk of columns: the cache
writes row ``r``'s chunk at the row's own offset ``write_start_B[r]`` and hands attention
``buffer[:key_len]`` — a view, nothing is concatenated or copied. What a row may see of the
buffer is the mask's job (``masks.chunk_mask``). Columns before a row's chunk hold its final
keys/values; a chunk's clean columns become cached simply because the next chunk starts after
them, and re-feeding a column (a changed token: the revisit window) overwrites its slot.

Shapes: buffers ``[capacity, b, ng, hn]`` per layer (megatron's ``[s, b, heads, head_dim]``).
"""

import torch


class RaggedKVCache:
    """Per-layer key/value buffers ``[capacity, b, ng, hn]``; see the module docstring."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.write_start_B: torch.Tensor | None = None
        """Column at which each row's chunk of the next forward is written."""
        self.key_len = 0
        """Buffer columns the next forward attends."""

    def extend(self, layer_number: int, key, value):
        """``model.attention.KVCache.extend``: write the chunk, return ``buffer[:key_len]``."""
        width, batch = key.shape[0], key.shape[1]
        if layer_number not in self.keys:
            shape = (self.capacity, *key.shape[1:])
            self.keys[layer_number] = key.new_zeros(shape)
            self.values[layer_number] = value.new_zeros(shape)
        keys, values = self.keys[layer_number], self.values[layer_number]
        cols_WB = (self.write_start_B[None, :]
                   + torch.arange(width, device=key.device)[:, None])
        rows_WB = torch.arange(batch, device=key.device)[None, :].expand(width, batch)
        keys[cols_WB, rows_WB] = key
        values[cols_WB, rows_WB] = value
        return keys[:self.key_len], values[:self.key_len]

    def select_batch(self, index_B: torch.Tensor) -> None:
        """Keep only the rows ``index_B`` (finished rows leave the batch)."""
        for store in (self.keys, self.values):
            for k in store:
                store[k] = store[k][:, index_B]
