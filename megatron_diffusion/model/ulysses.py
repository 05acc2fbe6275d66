"""Core attention under context parallelism: DeepSpeed-Ulysses around ``DiffusionCoreAttention``.

Each CP rank enters attention with its slice of the sequence and all heads of its TP rank:
``query [S/cp, b, np, hn]``, ``key/value [S/cp, b, ng, hn]`` (RoPE already applied from the
global positions). DeepSpeed's ``DistributedAttention`` exchanges them (all-to-all over the CP
group) into the *whole* sequence for ``np/cp`` heads, runs our core attention there with the full
mask of the unsplit row (dense boolean mask or Flex ``BlockMask``: any mask works, block
diffusion and packing included), and exchanges the result back to ``[S/cp, b, np*hn]``. The
backward pass is the same two exchanges reversed (DeepSpeed's autograd function).

Heads are split contiguously, so rank ``r`` gets query heads ``[r np/cp, (r+1) np/cp)`` and the
key/value groups they read when ``ng`` divides by ``cp``; otherwise keys/values are expanded to
``np`` heads first (GQA expansion: more traffic, same result). ``np`` must divide by ``cp``
(checked at config time: ``RunConfig._check_context_parallel`` in ``config/run.py``).
"""

from megatron_diffusion.model.attention import DiffusionCoreAttention
from megatron_diffusion.parallel import context_parallel


class UlyssesCoreAttention(DiffusionCoreAttention):
    """``DiffusionCoreAttention`` over the whole sequence for a head slice (all-to-all CP)."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if self.kv_cache is not None:
            raise NotImplementedError("the sampler's KV cache does not run under context "
                                      "parallelism; sample with parallel.context_parallel_size=1")
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("UlyssesCoreAttention takes the mask as attention_mask")
        from megatron_diffusion.model.backends import deepspeed_ulysses

        distributed_attention, _ = deepspeed_ulysses()
        cp = context_parallel.world_size()
        np_, ng = query.shape[2], key.shape[2]
        if ng % cp:  # GQA expansion: every rank then holds whole key/value groups
            key = key.repeat_interleave(np_ // ng, dim=2)
            value = value.repeat_interleave(np_ // ng, dim=2)
        exchange = distributed_attention(self._whole_sequence, context_parallel.group(),
                                         scatter_idx=2, gather_idx=0)
        context = exchange(query, key, value, 1, None, attention_mask)  # [S/cp, b, np, hn]
        return context.reshape(context.shape[0], context.shape[1], -1)

    def _whole_sequence(self, query, key, value, attention_mask):
        """Core attention on ``[S, b, np/cp, hn]``; returns ``[S, b, np/cp, hn]``."""
        context = DiffusionCoreAttention.forward(self, query, key, value, attention_mask)
        return context.view(context.shape[0], context.shape[1], query.shape[2], query.shape[3])
