"""Part ``attention``: the block-diffusion attention kernel alone, Flex ``BlockMask`` vs dense SDPA.

Rows of ``L`` clean tokens (``L`` from ``shapes.seq_lens``: 2K and 8K on the GPU), block mode
with ``B = 4`` (input ``S = 2L``), ``shapes.attention_rows`` rows, the 1B model's heads (32 query,
8 key/value, head dim 64), bf16. Packing: ``shared`` (one static mask) and ``isolated`` (random
document lengths per row; the mask depends on the batch and is rebuilt per batch, its build time
is reported as ``mask_build_ms``). Backends: ``flex``; ``sdpa``, the model's own call (a boolean
mask with ``enable_gqa=True``, which PyTorch serves with its math kernel: ``S x S`` scores per
head in memory); ``sdpa_expanded_kv``, the key/value heads repeated so the fused
memory-efficient kernel takes the mask. Each backend is timed forward and forward + backward (median of
``repeats``), after a check that both give the same output. ``attended_tflops`` counts only the
pairs the mask allows (``4 d H P`` forward, three times that with backward): the rate of useful
work. On CPU, Flex runs forward only (eager), so its backward row is skipped there.
"""

import torch
import torch.nn.functional as F

from tools.gpu_check.shapes import shapes_for
from tools.gpu_check.timing import time_median

BLOCK_SIZE = 4


def documents(rows: int, L: int, visibility: str, generator) -> torch.Tensor:
    """Document ids ``[rows, L]``: one document (shared) or random lengths >= 2 B (isolated)."""
    doc = torch.zeros(rows, L, dtype=torch.long)
    if visibility == "isolated":
        for r in range(rows):
            cuts = torch.randint(2 * BLOCK_SIZE, L, (max(L // 512, 3),), generator=generator)
            for c in cuts.tolist():
                doc[r, c:] += 1
    return doc


def inputs(rows, heads, S, device, dtype, generator):
    hq, hkv, d = heads
    make = lambda h: torch.randn(rows, h, S, d, generator=generator).to(device, dtype)  # noqa: E731
    q, k, v = make(hq), make(hkv), make(hkv)
    return [t.requires_grad_() for t in (q, k, v)]


def _runners(cfg, doc, device):
    from megatron_diffusion.masks.dense import attention_allowed
    from megatron_diffusion.masks.flex import create_flex_block_mask, flex_attention_forward

    cuda = device == "cuda"
    allowed = attention_allowed(cfg, doc.to(device))[:, None]
    block_mask = create_flex_block_mask(cfg, doc.to(device), compile=cuda)

    def sdpa(q, k, v):  # the model's call (model/attention.py): GQA through enable_gqa
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)

    def sdpa_expanded_kv(q, k, v):  # key/value heads repeated: the fused kernels accept a mask
        groups = q.shape[1] // k.shape[1]
        k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)

    def flex(q, k, v):
        return flex_attention_forward(q, k, v, block_mask, enable_gqa=True)

    return {"flex": flex, "sdpa_expanded_kv": sdpa_expanded_kv, "sdpa": sdpa}, block_mask


def tiles_computed_fraction(block_mask) -> float:
    """Fraction of the ``S x S`` score tiles Flex computes (partial + full; empty ones skipped)."""
    computed = block_mask.kv_num_blocks.sum().item()
    if block_mask.full_kv_num_blocks is not None:
        computed += block_mask.full_kv_num_blocks.sum().item()
    rows, heads, q_tiles = block_mask.kv_num_blocks.shape
    kv_tiles = -(-block_mask.seq_lengths[1] // block_mask.BLOCK_SIZE[1])
    return computed / (rows * heads * q_tiles * kv_tiles)


def _time_backend(fn, qkv, reps, backward: bool) -> float:
    detached = [t.detach() for t in qkv]  # CPU Flex refuses inputs that require grad

    def fwd():
        with torch.no_grad():
            fn(*detached)

    def fwd_bwd():
        fn(*qkv).sum().backward()

    return time_median(fwd_bwd if backward else fwd, reps=reps, warmup=2)


def measure(sh, L: int, visibility: str) -> dict:
    from megatron_diffusion.masks.config import AttentionConfig
    from megatron_diffusion.masks.flex import create_flex_block_mask
    from megatron_diffusion.training.observability import attended_pairs

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    g = torch.Generator().manual_seed(L)
    cfg = AttentionConfig(mode="block", block_size=BLOCK_SIZE, visibility=visibility)
    doc = documents(sh.attention_rows, L, visibility, g)
    S = 2 * L
    qkv = inputs(sh.attention_rows, sh.attention_heads, S, device, dtype, g)
    runners, block_mask = _runners(cfg, doc, device)
    with torch.no_grad():
        plain = [t.detach() for t in qkv]
        diff = (runners["flex"](*plain).float()
                - runners["sdpa_expanded_kv"](*plain).float()).abs().max().item()
    pairs = attended_pairs(cfg, doc.to(device)) * sh.attention_rows
    out = {"seq_len": L, "model_tokens": S, "rows": sh.attention_rows, "visibility": visibility,
           "heads": list(sh.attention_heads), "dtype": str(dtype),
           "pairs_fraction_of_dense": pairs / (sh.attention_rows * S * S),
           "flex_tiles_computed_fraction": tiles_computed_fraction(block_mask),
           "max_abs_diff_flex_vs_sdpa": diff}
    if visibility == "isolated":
        out["mask_build_ms"] = 1e3 * time_median(
            lambda: create_flex_block_mask(cfg, doc.to(device), compile=cuda), reps=sh.repeats)
    _time_backends(out, runners, qkv, sh, pairs, cuda)
    return out


def _time_backends(out: dict, runners: dict, qkv, sh, pairs: float, cuda: bool) -> None:
    """Forward and forward+backward time of each backend into ``out``, then the speedups."""
    hq, _, d = sh.attention_heads
    for name, fn in runners.items():  # flex first: a dense OOM at 8K must not cost its figures
        for backward in (False, True):
            key = f"{name}_{'fwd_bwd' if backward else 'fwd'}"
            if backward and name == "flex" and not cuda:
                out[key + "_ms"] = None
                out[key + "_skipped"] = "FlexAttention has no backward on CPU (torch 2.13)"
                continue
            try:
                t = _time_backend(fn, qkv, sh.repeats, backward)
            except torch.OutOfMemoryError as e:
                out[key + "_ms"], out[key + "_failed"] = None, f"OutOfMemoryError: {e}"[:300]
                torch.cuda.empty_cache()
                continue
            out[key + "_ms"] = 1e3 * t
            out[key + "_attended_tflops"] = (3 if backward else 1) * 4 * d * hq * pairs / t / 1e12
    for other in ("sdpa", "sdpa_expanded_kv"):
        for kind in ("fwd", "fwd_bwd"):
            if out.get(f"flex_{kind}_ms") and out.get(f"{other}_{kind}_ms"):
                out[f"speedup_flex_over_{other}_{kind}"] = (out[f"{other}_{kind}_ms"]
                                                            / out[f"flex_{kind}_ms"])


def attention_part(ctx) -> dict:
    sh = shapes_for(ctx.dry_run)
    rows: list = []
    ctx.partial["rows"] = rows
    for visibility in ("shared", "isolated"):
        for L in sh.seq_lens:
            ctx.guard(rows, f"block{BLOCK_SIZE}/L{L}/{visibility}",
                      lambda: measure(sh, L, visibility), need_s=3.0 if ctx.dry_run else 10.0)
    return {"rows": rows, "block_size": BLOCK_SIZE}

