"""Core attention for diffusion masks, plugged into megatron-core's ``SelfAttention`` by spec.

megatron hands core attention ``query [sq, b, np, hn]``, ``key/value [sk, b, ng, hn]`` (RoPE
already applied) and ``attention_mask``. Ours is the boolean mask built by
``megatron_diffusion.masks`` in megatron's convention (True = masked), shape ``[b, 1, sq, sk]``,
so every mode (causal, bidirectional, block over ``x_t (+) x0``, packed shared/isolated) runs
through one module. Backends, chosen by ``ModelConfig.attention_backend``:

* ``sdpa``: ``F.scaled_dot_product_attention`` with the dense mask (CPU and GPU);
* ``flex``: FlexAttention with a ``BlockMask`` passed as ``attention_mask`` (GPU; skips fully
  masked tiles).

The sampler's exact KV cache hooks in here too: while a ``BlockKVCache`` is attached
(``attach_kv_cache``), keys/values of earlier, finished blocks are prepended to the current ones,
and a *commit pass* appends the current block's keys/values to the cache (METHOD.md 8).
"""

import contextlib

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention


class BlockKVCache:
    """Per-layer keys/values of finished blocks, ``[s_cached, b, ng, hn]`` each.

    ``commit=True`` while running a finished block as clean context: its keys/values are kept.
    """

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.commit = False

    @property
    def length(self) -> int:
        return next(iter(self.keys.values())).shape[0] if self.keys else 0

    def extend(self, layer_number: int, key, value):
        if layer_number in self.keys:
            key_all = torch.cat([self.keys[layer_number], key], dim=0)
            value_all = torch.cat([self.values[layer_number], value], dim=0)
        else:
            key_all, value_all = key, value
        if self.commit:
            self.keys[layer_number], self.values[layer_number] = key_all, value_all
        return key_all, value_all

    def select_batch(self, index: torch.Tensor) -> None:
        """Keep only the rows ``index`` (finished samples leave the batch)."""
        for store in (self.keys, self.values):
            for k in store:
                store[k] = store[k][:, index]


class DiffusionCoreAttention(DotProductAttention):
    """Dense-mask SDPA / FlexAttention core attention with an optional block KV cache."""

    kv_cache: BlockKVCache | None = None

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("DiffusionCoreAttention takes the packing mask as "
                                      "attention_mask, not packed_seq_params/attention_bias")
        if self.kv_cache is not None:
            key, value = self.kv_cache.extend(self.layer_number, key, value)
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        dropout_p = self.attention_dropout.p if self.training else 0.0
        groups = q.shape[1] // k.shape[1]  # from the tensors: Ulysses hands in a head slice
        if torch.is_tensor(attention_mask) or attention_mask is None:
            allowed = None if attention_mask is None else ~attention_mask
            with self._rng():
                context = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=allowed, dropout_p=dropout_p,
                    is_causal=attention_mask is None, scale=self.softmax_scale,
                    enable_gqa=groups > 1)
        else:  # a FlexAttention BlockMask
            from megatron_diffusion.masks.flex import flex_attention_forward

            if dropout_p:
                raise NotImplementedError("attention dropout is not supported with flex")
            context = flex_attention_forward(q, k, v, attention_mask, scale=self.softmax_scale,
                                             enable_gqa=groups > 1)
        # [b, h, sq, d] -> [sq, b, h*d]
        context = context.permute(2, 0, 1, 3).contiguous()
        return context.view(context.shape[0], context.shape[1], -1)

    def _rng(self):
        if self.attention_dropout.p == 0 or not self.training or self.config.sequence_parallel:
            return contextlib.nullcontext()
        from megatron.core import tensor_parallel

        return tensor_parallel.get_cuda_rng_tracker().fork()


@contextlib.contextmanager
def attach_kv_cache(model, cache: BlockKVCache | None):
    """Attach ``cache`` to every ``DiffusionCoreAttention`` of ``model`` for the ``with`` body."""
    modules = [m for m in model.modules() if isinstance(m, DiffusionCoreAttention)]
    for m in modules:
        m.kv_cache = cache
    try:
        yield cache
    finally:
        for m in modules:
            m.kv_cache = None
