"""What the sampler drives: a model forward with an exact KV cache, or any plain callable.

``ModelBackend`` wraps a ``DiffusionGPTModel`` (one TP shard):

* **KV cache.** A ``PreallocatedKVCache`` (a ``BlockKVCache`` with one buffer per layer sized
  for the whole sequence) is attached to every core-attention module for a generation. Each
  forward writes its keys/values after the cached ones and attends ``buffer[:cached + n]`` — a
  view, no concatenation. Only the first ``num_commit`` tokens of the chunk (clean context that
  is now final) advance the cached length; the rest (the noisy block) are scratch, overwritten
  by the next forward. This is exactly the arithmetic of ``BlockKVCache`` (same keys, same
  order), without the copies.
* **Only the logits needed.** A pre-hook on the output layer keeps the last ``num_logits``
  hidden states, so a long prompt does not cost a ``[prompt, vocab]`` projection.
* **Tensor parallelism.** Logits are vocabulary-parallel; they are all-gathered over the TP
  group, so every rank sees the same full-vocabulary logits and takes the same decisions.

``CallableBackend`` adapts any ``fn(input_ids, position_ids, attention_mask) -> logits`` (the
model's forward signature; stubs in tests). It has no cache: the sampler then feeds the whole
sequence every step, which is the same computation.
"""

import contextlib

import torch

from megatron_diffusion.model.attention import BlockKVCache, attach_kv_cache


class PreallocatedKVCache(BlockKVCache):
    """Per-layer key/value buffers ``[capacity, b, ng, hn]``; ``num_cached`` rows are final."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.num_cached = 0
        self.num_commit = 0
        """Leading tokens of the current forward that become final (set before each forward)."""

    @property
    def length(self) -> int:
        return self.num_cached

    def extend(self, layer_number: int, key, value):
        start, end = self.num_cached, self.num_cached + key.shape[0]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} > capacity {self.capacity}")
        if layer_number not in self.keys:
            shape = (self.capacity, *key.shape[1:])
            self.keys[layer_number] = key.new_empty(shape)
            self.values[layer_number] = value.new_empty(shape)
        keys, values = self.keys[layer_number], self.values[layer_number]
        keys[start:end] = key
        values[start:end] = value
        return keys[:end], values[:end]

    def advance(self) -> None:
        self.num_cached += self.num_commit
        self.num_commit = 0


class ModelBackend:
    """A ``DiffusionGPTModel`` as the sampler's forward, with cache and TP gather."""

    supports_cache = True

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.cache: PreallocatedKVCache | None = None
        self._num_logits: int | None = None
        from megatron.core import parallel_state

        self.tp_size = parallel_state.get_tensor_model_parallel_world_size()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @contextlib.contextmanager
    def session(self, capacity: int, use_cache: bool):
        """One generation: a fresh cache (if used) and the output-layer slicing hook."""
        self.cache = PreallocatedKVCache(capacity) if use_cache else None
        hook = self.model.output_layer.register_forward_pre_hook(self._keep_last_hidden)
        try:
            with attach_kv_cache(self.model, self.cache), torch.inference_mode():
                yield self
        finally:
            hook.remove()
            self.cache = None

    def _keep_last_hidden(self, module, args):
        if self._num_logits is None:
            return None
        return (args[0][-self._num_logits:], *args[1:])

    def forward(self, tokens_BQ, positions_BQ, mask_B1QK, *, num_commit: int,
                num_logits: int) -> torch.Tensor:
        """Full-vocabulary float32 logits ``[b, num_logits, V]`` of the chunk's last positions."""
        if self.cache is not None:
            self.cache.num_commit = num_commit
        self._num_logits = num_logits
        try:
            logits_BNV = self.model(tokens_BQ, positions_BQ, mask_B1QK)
        finally:
            self._num_logits = None
        if self.cache is not None:
            self.cache.advance()
        if self.tp_size > 1:
            from megatron.core.tensor_parallel.mappings import (
                gather_from_tensor_model_parallel_region)

            logits_BNV = gather_from_tensor_model_parallel_region(logits_BNV)
        # drop the vocabulary padding (its size depends on the TP size): sampling then draws
        # the same tokens under any TP layout
        return logits_BNV[..., :self.model.real_vocab_size].float()

    def select_rows(self, index_B: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.select_batch(index_B)


class CallableBackend:
    """Any callable with the model's forward signature; recomputes the sequence every step."""

    supports_cache = False

    def __init__(self, fn, device: torch.device | str = "cpu"):
        self.fn = fn
        self.device = torch.device(device)

    @contextlib.contextmanager
    def session(self, capacity: int, use_cache: bool):
        with torch.inference_mode():
            yield self

    def forward(self, tokens_BQ, positions_BQ, mask_B1QK, *, num_commit: int,
                num_logits: int) -> torch.Tensor:
        return self.fn(tokens_BQ, positions_BQ, mask_B1QK)[:, -num_logits:].float()

    def select_rows(self, index_B: torch.Tensor) -> None:
        pass


def as_backend(model_or_fn, device=None):
    """A ``ModelBackend`` for a module with diffusion core attention, else a ``CallableBackend``."""
    if hasattr(model_or_fn, "session") and hasattr(model_or_fn, "supports_cache"):
        return model_or_fn  # already a backend (or a wrapper of one)
    from megatron_diffusion.model.attention import DiffusionCoreAttention

    if isinstance(model_or_fn, torch.nn.Module) and any(
            isinstance(m, DiffusionCoreAttention) for m in model_or_fn.modules()):
        return ModelBackend(model_or_fn)
    return CallableBackend(model_or_fn, device or "cpu")
