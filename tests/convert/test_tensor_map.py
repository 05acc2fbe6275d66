"""The HF <-> megatron tensor layouts, on hand-labelled tensors (no megatron)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_diffusion.convert.tensor_map import (
    TensorLayout,
    fuse_qkv,
    hf_producers,
    new_row_init,
    split_qkv,
)


def _labelled(num_heads: int, head_dim: int, hidden: int, base: float) -> torch.Tensor:
    """Row j*head_dim + c of head j holds base + j (so rows say which head they came from)."""
    heads = base + torch.arange(num_heads, dtype=torch.float32)
    return heads.repeat_interleave(head_dim)[:, None].expand(-1, hidden).clone()


def test_fuse_qkv_groups_query_heads_with_their_kv_head():
    # 4 query heads, 2 groups (r = 2), head width 1: megatron order per group g is
    # q_{2g}, q_{2g+1}, k_g, v_g
    q, k, v = _labelled(4, 1, 3, 0), _labelled(2, 1, 3, 100), _labelled(2, 1, 3, 200)
    fused = fuse_qkv(q, k, v, num_query_groups=2)
    assert fused[:, 0].tolist() == [0, 1, 100, 200, 2, 3, 101, 201]


def test_fuse_qkv_bias_and_wide_heads():
    q, k, v = (_labelled(n, 2, 1, b)[:, 0] for n, b in ((6, 0), (2, 10), (2, 20)))
    fused = fuse_qkv(q, k, v, num_query_groups=2)
    assert fused.tolist() == [0, 0, 1, 1, 2, 2, 10, 10, 20, 20, 3, 3, 4, 4, 5, 5, 11, 11, 21, 21]


@settings(max_examples=30, deadline=None)
@given(ng=st.integers(1, 4), r=st.integers(1, 4), d=st.integers(1, 4), h=st.integers(1, 5),
       bias=st.booleans())
def test_split_inverts_fuse(ng, r, d, h, bias):
    g = torch.Generator().manual_seed(ng * 1000 + r * 100 + d * 10 + h)
    tail = () if bias else (h,)
    q = torch.randn(ng * r * d, *tail, generator=g)
    k, v = (torch.randn(ng * d, *tail, generator=g) for _ in range(2))
    fused = fuse_qkv(q, k, v, ng)
    assert fused.shape == (ng * (r + 2) * d, *tail)
    q2, k2, v2 = split_qkv(fused, ng * r, ng, d)
    assert torch.equal(q, q2) and torch.equal(k, k2) and torch.equal(v, v2)


def _layout(**kw) -> TensorLayout:
    base = dict(num_layers=2, hidden_size=4, num_attention_heads=4, num_query_groups=2,
                head_dim=2, ffn_hidden_size=6, hf_vocab_size=5, vocab_size=6,
                padded_vocab_size=8, qkv_bias=False, qk_norm=False, tied=False)
    base.update(kw)
    return TensorLayout(**base)


def test_vocab_rows_added_with_the_mean_and_padding_dropped():
    layout = _layout()
    rule = layout.rules()[0]
    rows = torch.arange(20, dtype=torch.float32).reshape(5, 4)
    full = layout.to_megatron(rule, [rows])
    assert full.shape == (8, 4)
    assert torch.equal(full[:5], rows)
    assert torch.equal(full[5], rows.mean(0))  # the added [MASK] row
    assert torch.equal(full[6:], torch.zeros(2, 4))  # megatron's padding
    (back,) = layout.to_hf(rule, full)
    assert torch.equal(back, full[:6])


def test_new_row_init_is_the_float32_mean_in_the_source_dtype():
    rows = torch.randn(7, 3).bfloat16()
    new = new_row_init(rows, 2)
    assert new.dtype == torch.bfloat16 and new.shape == (2, 3)
    assert torch.equal(new[1], rows.float().mean(0).bfloat16())


def test_names_and_shapes_per_architecture():
    untied = _layout(qkv_bias=True).hf_shapes()
    assert untied["model.layers.1.self_attn.q_proj.weight"] == (8, 4)
    assert untied["model.layers.1.self_attn.k_proj.bias"] == (4,)
    assert untied["model.layers.0.mlp.down_proj.weight"] == (4, 6)
    assert untied["lm_head.weight"] == (5, 4)
    assert _layout(qkv_bias=True).hf_shapes(exported=True)["lm_head.weight"] == (6, 4)
    tied = _layout(tied=True).hf_shapes()
    assert "lm_head.weight" not in tied and "model.layers.0.self_attn.q_proj.bias" not in tied
    assert len(untied) == 3 + 2 * 12  # embed, norm, head + 12 per layer with biases


def test_qwen3_norms_are_head_wide_and_map_to_megatrons_qk_layernorm():
    layout = _layout(qk_norm=True, head_dim=3)  # 4 heads of 3 in a width of 4, as Qwen3
    shapes = layout.hf_shapes()
    assert shapes["model.layers.1.self_attn.q_norm.weight"] == (3,)
    assert shapes["model.layers.1.self_attn.k_norm.weight"] == (3,)
    assert shapes["model.layers.1.self_attn.q_proj.weight"] == (12, 4)
    assert shapes["model.layers.1.self_attn.o_proj.weight"] == (4, 12)
    rules = {r.megatron: r.hf for r in layout.rules()}
    assert rules["decoder.layers.1.self_attention.q_layernorm.weight"] == (
        "model.layers.1.self_attn.q_norm.weight",)
    assert rules["decoder.layers.1.self_attention.k_layernorm.weight"] == (
        "model.layers.1.self_attn.k_norm.weight",)
    assert "model.layers.0.self_attn.q_norm.weight" not in _layout().hf_shapes()


def test_every_hf_tensor_round_trips_through_megatron_names():
    layout = _layout(qkv_bias=True, qk_norm=True)
    g = torch.Generator().manual_seed(0)
    hf = {n: torch.randn(s, generator=g) for n, s in layout.hf_shapes().items()}
    full = {r.megatron: layout.to_megatron(r, [hf[n] for n in r.hf]) for r in layout.rules()}
    assert full["decoder.layers.0.mlp.linear_fc1.weight"].shape == (12, 4)
    assert torch.equal(full["decoder.layers.0.mlp.linear_fc1.weight"][:6],
                       hf["model.layers.0.mlp.gate_proj.weight"])
    back = {n: f() for n, f in hf_producers(layout, full.__getitem__).items()}
    for name, t in hf.items():
        assert torch.equal(back[name][: t.shape[0]], t), name
