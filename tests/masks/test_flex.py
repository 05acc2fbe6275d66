"""FlexAttention BlockMasks agree element-wise with the dense masks, and Flex forward equals SDPA.

CPU Flex has no backward in torch 2.13, so only the forward is checked here.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

from megatron_diffusion.layout import document_ids_from_lengths
from megatron_diffusion.masks import AttentionConfig, attention_allowed
from megatron_diffusion.masks.flex import create_flex_block_mask, densify, flex_attention_forward

# (doc lengths per row, block size, tile size): S = 2L in block mode, so tiles do and do not
# divide S, and rows of one batch pack differently.
SHAPES = [
    ([[3, 5], [6, 2]], 2, 4),
    ([[4, 4, 4], [12]], 4, 8),
    ([[7, 3], [1, 9]], 5, 8),  # S = 20 (block) / 10: last tile is short
]
CONFIGS = [
    AttentionConfig(mode, 1 if mode != "block" else 0, visibility, clean_stream)
    for mode, visibility, clean_stream in itertools.product(
        ["causal", "bidirectional", "block"], ["shared", "isolated"], ["block_causal", "causal"]
    )
    if mode == "block" or clean_stream == "block_causal"  # clean_stream only matters for block
]


def batch_docs(rows):
    return torch.stack([document_ids_from_lengths(r) for r in rows])


def with_block_size(cfg, block_size):
    return AttentionConfig(cfg.mode, block_size, cfg.visibility, cfg.clean_stream)


@pytest.mark.parametrize("rows, block_size, tile", SHAPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.mode}-{c.visibility}-{c.clean_stream}")
def test_block_mask_matches_dense(rows, block_size, tile, cfg):
    cfg = with_block_size(cfg, block_size)
    doc = batch_docs(rows)
    dense = attention_allowed(cfg, doc)
    block_mask = create_flex_block_mask(cfg, doc, tile_size=tile)
    applied = densify(block_mask).expand_as(dense)  # shared: batch 1 broadcasts
    assert torch.equal(applied, dense)
    # the sparse structure is tight: a partial tile holds allowed and masked entries (or is cut
    # short by the end of the row, which Flex pads as masked)
    S = dense.shape[-1]
    for b in range(block_mask.kv_num_blocks.shape[0]):
        for qt in range(block_mask.kv_num_blocks.shape[-1]):
            for slot in range(int(block_mask.kv_num_blocks[b, 0, qt])):
                kt = int(block_mask.kv_indices[b, 0, qt, slot])
                tile_SS = dense[b, qt * tile:(qt + 1) * tile, kt * tile:(kt + 1) * tile]
                assert tile_SS.any()
                assert not tile_SS.all() or tile_SS.shape != (tile, tile)
    assert block_mask.seq_lengths == (S, S)


def test_shared_block_mask_is_cached_and_isolated_is_not():
    cfg = AttentionConfig("block", 2, "shared")
    first = create_flex_block_mask(cfg, batch_docs([[3, 5]]), tile_size=4)
    again = create_flex_block_mask(cfg, batch_docs([[6, 2], [8]]), tile_size=4)
    assert first is again and first.kv_num_blocks.shape[0] == 1
    iso = AttentionConfig("block", 2, "isolated")
    a = create_flex_block_mask(iso, batch_docs([[3, 5]]), tile_size=4)
    b = create_flex_block_mask(iso, batch_docs([[6, 2]]), tile_size=4)
    assert not torch.equal(densify(a), densify(b))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.mode}-{c.visibility}-{c.clean_stream}")
def test_flex_forward_equals_sdpa(cfg):
    cfg = with_block_size(cfg, 2)
    doc = batch_docs([[3, 5], [6, 2]])
    allowed = attention_allowed(cfg, doc)
    B, S, _ = allowed.shape
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, 2, S, 8, generator=g) for _ in range(3))
    out = flex_attention_forward(q, k, v, create_flex_block_mask(cfg, doc, tile_size=4))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # and the mask matters: without it the answer differs
    assert not torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-3) or allowed.all()


@pytest.mark.slow
def test_compiled_flex_forward_equals_sdpa():
    """The path used on GPU (torch.compile'd flex_attention), run on CPU: ~20 s to compile."""
    cfg = AttentionConfig("block", 2, "isolated")
    doc = batch_docs([[3, 5], [6, 2]])
    allowed = attention_allowed(cfg, doc)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 16, 8, generator=g) for _ in range(3))
    out = flex_attention_forward(q, k, v, create_flex_block_mask(cfg, doc, tile_size=4), compiled=True)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: compiled Flex kernels")
@pytest.mark.parametrize("visibility", ["shared", "isolated"])
def test_cuda_flex_forward_and_backward_equal_sdpa(visibility):
    """On GPU Flex trains: forward and gradients match SDPA with the dense mask; S = 2 * 200 is
    not a multiple of the 128 tile, so the short last tile is exercised."""
    cfg = AttentionConfig("block", 4, visibility)
    doc = batch_docs([[120, 80], [200]]).cuda()
    allowed = attention_allowed(cfg, doc)
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = [torch.randn(2, 4, 400, 64, device="cuda", generator=g, requires_grad=True) for _ in range(3)]
    out = flex_attention_forward(*qkv, create_flex_block_mask(cfg, doc))
    ref_qkv = [t.detach().clone().requires_grad_() for t in qkv]
    ref = F.scaled_dot_product_attention(*ref_qkv, attn_mask=allowed[:, None])
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    for t, r in zip(qkv, ref_qkv):
        torch.testing.assert_close(t.grad, r.grad, atol=1e-4, rtol=1e-4)
