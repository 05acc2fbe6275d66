"""Core attention for diffusion masks, plugged into megatron-core's ``SelfAttention`` by spec.

megatron hands core attention ``query [sq, b, np, hn]``, ``key/value [sk, b, ng, hn]`` (RoPE
already applied) and ``attention_mask``. Ours is the boolean mask built by
``megatron_diffusion.masks`` in megatron's convention (True = masked), shape ``[b, 1, sq, sk]``,
so every mode (causal, bidirectional, block over ``x_t (+) x0``, packed shared/isolated) runs
through one module. Backends, chosen by ``ModelConfig.attention_backend``:

* ``sdpa``: ``F.scaled_dot_product_attention`` with the dense mask (CPU and GPU);
* ``flex``: FlexAttention with a ``BlockMask`` passed as ``attention_mask`` (GPU; skips fully
  masked tiles).

The sampler's KV cache hooks in here too, through the one method attention needs from it
(``KVCache``, a protocol; the sampler's implementation is ``sampling/kv_cache.py``): while a
cache is attached (``attach_kv_cache``), every forward hands it this layer's new keys/values and
attends what it returns — the cached columns followed by the new ones. megatron's
``SelfAttention`` owns the call to core attention, so the cache cannot be an argument: it is an
attribute of each core-attention module for the duration of the ``with`` body, and ``None``
otherwise (training never sees one).
"""

import contextlib
from typing import Protocol

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention


class KVCache(Protocol):
    """What core attention needs from a KV cache."""

    def extend(self, layer_number: int, key: torch.Tensor,
               value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Take layer ``layer_number``'s new ``key``/``value`` ``[s_new, b, ng, hn]``; return
        the keys/values to attend, ``[s_key, b, ng, hn]`` (the mask indexes their columns)."""
        ...


class DiffusionCoreAttention(DotProductAttention):
    """Dense-mask SDPA / FlexAttention core attention with an optional block KV cache."""

    kv_cache: KVCache | None = None
    """Set only inside ``attach_kv_cache`` (sampling); ``None`` in training."""

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
def attach_kv_cache(model, cache: KVCache | None):
    """Attach ``cache`` to every ``DiffusionCoreAttention`` of ``model`` for the ``with`` body."""
    modules = [m for m in model.modules() if isinstance(m, DiffusionCoreAttention)]
    for m in modules:
        m.kv_cache = cache
    try:
        yield cache
    finally:
        for m in modules:
            m.kv_cache = None
