"""The sampler's model forward at TP=1: megatron's ops, without megatron's per-layer Python.

A decode step of a small model is dominated by Python, not arithmetic: one megatron
``TransformerLayer`` forward walks ~20 wrapper functions (inference-context, CUDA-graph,
recompute and offload checks, bias-dropout-add factories, autograd-function applications), and
RoPE recomputes ``cos``/``sin`` of the same angles for the query and the key of every layer.
``lean_forward`` runs the same tensor operations in the same order on the model's own modules
and parameters — embedding, RMSNorms, fused QKV split as megatron splits it, the per-head q/k
RMSNorms where the model has them (Qwen3's ``qk_layernorm``), RoPE
(``cos``/``sin`` computed once per forward), ``DiffusionCoreAttention`` (mask, KV cache), SwiGLU,
residual adds, final norm, the output layer with its hooks (only the positions asked for;
[MASK] forbidden) — so its logits are bit-identical to ``model(...)``
(tests/sampling/test_exactness.py). It applies only to the layout it reproduces
(``supports_lean_forward``); anything else runs megatron's forward.
"""

import torch
import torch.nn.functional as F

from megatron_diffusion.model.attention import DiffusionCoreAttention


def supports_lean_forward(model, tp_size: int) -> bool:
    """True for a TP=1 inference model of the local spec that ``lean_forward`` reproduces."""
    c = model.config
    if not (tp_size == 1 and model.pre_process and model.post_process
            and model.position_embedding_type == "rope" and not c.sequence_parallel
            and c.context_parallel_size == 1 and not c.add_bias_linear
            and not c.fp32_residual_connection and not c.apply_residual_connection_post_layernorm
            and c.gated_linear_unit and c.activation_func is F.silu and not c.rotary_interleaved
            and c.num_moe_experts is None and getattr(c, "activation_func_clamp_value", None) is None
            and not getattr(c, "multi_latent_attention", False)
            and getattr(model.rotary_pos_emb, "rotary_percent", 1.0) == 1.0):
        return False
    for layer in model.decoder.layers:
        attn = layer.self_attention
        norms = (layer.input_layernorm, layer.pre_mlp_layernorm)
        if c.qk_layernorm:
            norms += (attn.q_layernorm, attn.k_layernorm)
        if not (isinstance(attn.core_attention, DiffusionCoreAttention)
                and all(type(n) is torch.nn.RMSNorm for n in norms)
                and type(layer.cross_attention).__name__ == "IdentityOp"):
            return False
    return type(model.decoder.final_layernorm) is torch.nn.RMSNorm


def _rope(t, cos, sin):
    """megatron's ``_apply_rotary_pos_emb_bshd`` (non-interleaved, full rotary dimension)."""
    x1, x2 = torch.chunk(t, 2, dim=-1)
    return (t * cos) + (torch.cat((-x2, x1), dim=-1) * sin)


def _attention(layer, x, cos, sin, mask):
    attn = layer.self_attention
    mixed, _ = attn.linear_qkv(x)
    groups = attn.num_query_groups_per_partition
    per_group = attn.num_attention_heads_per_partition // groups
    hn = attn.hidden_size_per_attention_head
    mixed = mixed.view(*mixed.shape[:-1], groups, (per_group + 2) * hn)
    query, key, value = torch.split(mixed, [per_group * hn, hn, hn], dim=3)
    query = query.reshape(query.size(0), query.size(1), -1, hn)
    if attn.config.qk_layernorm:  # per head, before RoPE, as megatron's attention does
        query, key = attn.q_layernorm(query), attn.k_layernorm(key)
    query, key = _rope(query, cos, sin), _rope(key, cos, sin)
    context = attn.core_attention(query, key, value, mask)
    out, _ = attn.linear_proj(context)
    return out


def _mlp(layer, x):
    mlp = layer.mlp
    hidden, _ = mlp.linear_fc1(x)
    gate, up = torch.chunk(hidden, 2, dim=-1)
    out, _ = mlp.linear_fc2(F.silu(gate) * up)
    return out


def lean_forward(model, tokens_BW, positions_BW, mask_B1WK) -> torch.Tensor:
    """``model(tokens_BW, positions_BW, mask_B1WK)`` for a ``supports_lean_forward`` model."""
    weight = model.embedding.word_embeddings.weight
    hidden = F.embedding(tokens_BW, weight).transpose(0, 1).contiguous()  # [s, b, h]
    inv_freq = model.rotary_pos_emb.inv_freq.to(positions_BW.device)
    freqs = positions_BW.to(inv_freq.dtype)[..., None] * inv_freq  # as DiffusionGPTModel
    emb = torch.cat((freqs, freqs), dim=-1).transpose(0, 1)[:, :, None, :]  # [s, b, 1, d]
    cos, sin = torch.cos(emb).to(hidden.dtype), torch.sin(emb).to(hidden.dtype)
    for layer in model.decoder.layers:
        hidden = hidden + _attention(layer, layer.input_layernorm(hidden), cos, sin, mask_B1WK)
        hidden = hidden + _mlp(layer, layer.pre_mlp_layernorm(hidden))
    hidden = model.decoder.final_layernorm(hidden)
    output_weight = (model.shared_embedding_or_output_weight()
                     if model.share_embeddings_and_output_weights else None)
    logits, _ = model.output_layer(hidden, weight=output_weight)  # hooks: positions, [MASK]
    return logits.transpose(0, 1).contiguous()
