"""Part ``train``: training throughput in bf16 on one GPU, AR vs block mode, dense SDPA vs Flex.

For each model (``shapes``), clean length ``L`` and mode — ``ar`` (causal mask, next-token
loss, ``S = L``) and ``block`` (block diffusion, ``B = 4``, input ``x_t (+) x0``, ``S = 2L``) —
and attention backend (``sdpa``: dense boolean mask; ``flex``: FlexAttention ``BlockMask``), it
times full optimizer steps (megatron schedule + Adam with fp32 main weights, as the trainer runs
them) after warm-up steps that include compilation, and reports the median step time,
clean and model tokens/s, peak memory and MFU.

MFU uses the trainer's estimate (``training.observability.flops_per_token``):
``F = rows * S * (6 N + 12 n_layers d_attn P / S)`` per step, ``N`` all parameters, ``d_attn``
heads x head dim, ``P`` the (query, key) pairs per row the mask allows (``attended_pairs``, counted
from the mask predicate: ``L^2 + L B`` in block mode, ``L (L + 1) / 2`` causal). ``mfu_dense_count``
is the same with ``P = S^2`` (every pair, what dense SDPA computes), for comparison. MFU is
against the peak from ``observability.peak_flops`` (989 TFLOP/s dense bf16 for H200);
``fraction_of_measured_matmul`` against the ``ceilings`` part's measured bf16 matmul rate.
"""

import gc
import time

import torch

from tools.gpu_check.report import Skip
from tools.gpu_check.shapes import shapes_for
from tools.gpu_check.timing import peak_memory_gib, peak_memory_reset, synchronize

BLOCK_SIZE = 4
_PAIRS: dict = {}


def _modes():
    from megatron_diffusion.loss.config import LossConfig
    from megatron_diffusion.masks.config import AttentionConfig

    return {"block": (AttentionConfig(mode="block", block_size=BLOCK_SIZE), LossConfig()),
            "ar": (AttentionConfig(mode="causal"), LossConfig(objective="ar"))}


def build(fields: dict, cuda: bool):
    """Model chunks (megatron DDP) and megatron's Adam, as the trainer builds them."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_diffusion.model.config import ModelConfig
    from megatron_diffusion.model.gpt import transformer_config
    from megatron_diffusion.parallel.process_groups import initialize_model_parallel
    from megatron_diffusion.training.model_setup import build_training_model

    initialize_model_parallel(1, 1, seed=0)
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = ModelConfig(**fields, params_dtype="bfloat16" if cuda else "float32")
    cfg.validate()
    chunks = build_training_model(cfg, transformer_config(cfg))
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-5, bf16=cuda,
                                                 params_dtype=dtype), chunks)
    return cfg, chunks, opt


def make_batch(mode: str, cfg, rows: int, L: int, generator):
    from megatron_diffusion.corruption.config import CorruptionConfig
    from megatron_diffusion.corruption.corruptor import Corruptor
    from megatron_diffusion.corruption.factory import CleanBatcher

    x0 = torch.randint(0, cfg.mask_token_id, (rows, L), generator=generator)
    doc = torch.zeros(rows, L, dtype=torch.long)
    if mode == "ar":
        return CleanBatcher().corrupt(x0, doc, step=0, generator=generator)
    corruptor = Corruptor(CorruptionConfig(warmup_steps=0), seq_len=L, mode="block",
                          block_size=BLOCK_SIZE, visibility="shared",
                          mask_token_id=cfg.mask_token_id,
                          random_token_ids=torch.arange(cfg.mask_token_id), total_steps=100)
    return corruptor.corrupt(x0, doc, step=50, generator=generator)


def _step(chunks, opt, batch, attn, loss_cfg, backend) -> float:
    from megatron_diffusion.training.forward_backward import ForwardSpec, forward_backward

    synchronize()
    t0 = time.perf_counter()
    for c in chunks:
        c.zero_grad_buffer()
    opt.zero_grad()
    res = forward_backward(chunks, [batch], ForwardSpec(attn, loss_cfg, backend=backend))
    opt.step()
    synchronize()
    if not res["loss"] == res["loss"]:
        raise FloatingPointError("non-finite loss")
    return time.perf_counter() - t0


def flops_figures(ctx, cfg, num_params, attn, rows, L, seconds) -> dict:
    from megatron_diffusion.training.observability import (attended_pairs, flops_per_token,
                                                           peak_flops)

    S = attn.sequence_length(L)
    d_attn = cfg.num_attention_heads * (cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads)
    key = (attn.mode, L)
    if key not in _PAIRS:  # one row of one document (shared visibility); counted on the GPU
        device = "cuda" if torch.cuda.is_available() else "cpu"
        _PAIRS[key] = attended_pairs(attn, torch.zeros(1, L, dtype=torch.long, device=device))
    pairs = _PAIRS[key]
    honest = rows * S * flops_per_token(num_params, cfg.num_layers, d_attn, S, pairs)
    dense = rows * S * flops_per_token(num_params, cfg.num_layers, d_attn, S)
    peak = peak_flops()
    measured = ctx.shared.get("matmul_flops")
    return {"attended_pairs_per_row": pairs, "pairs_fraction_of_dense": pairs / S**2,
            "flops_per_step": honest, "achieved_tflops": honest / seconds / 1e12,
            "peak_tflops": peak / 1e12 if peak else None,
            "mfu": honest / seconds / peak if peak else None,
            "mfu_dense_count": dense / seconds / peak if peak else None,
            "fraction_of_measured_matmul": honest / seconds / measured if measured else None}


def measure(ctx, sh, cfg, chunks, opt, mode, backend, L) -> dict:
    attn, loss_cfg = _modes()[mode]
    cuda = torch.cuda.is_available()
    if backend == "flex" and not cuda:
        raise Skip("FlexAttention has no backward on CPU (torch 2.13): GPU only")
    rows = max(1, sh.tokens_per_step // L)
    g = torch.Generator().manual_seed(0)
    peak_memory_reset()
    first = [_step(chunks, opt, make_batch(mode, cfg, rows, L, g), attn, loss_cfg, backend)
             for _ in range(sh.train_warmup)]
    times = [_step(chunks, opt, make_batch(mode, cfg, rows, L, g), attn, loss_cfg, backend)
             for _ in range(sh.train_steps)]
    dt = sorted(times)[len(times) // 2]
    num_params = sum(p.numel() for c in chunks for p in c.parameters())
    S = attn.sequence_length(L)
    return {"model_params": num_params, "mode": mode, "backend": backend, "seq_len": L,
            "model_tokens_per_row": S, "rows": rows, "step_seconds_median": dt,
            "step_seconds": times, "warmup_seconds": first,
            "tokens_per_s": rows * L / dt, "model_tokens_per_s": rows * S / dt,
            "peak_memory_gib": peak_memory_gib(),
            **flops_figures(ctx, cfg, num_params, attn, rows, L, dt)}


def train_part(ctx) -> dict:
    sh = shapes_for(ctx.dry_run)
    cuda = torch.cuda.is_available()
    rows: list = []
    ctx.partial["rows"] = rows
    for name, fields in sh.models.items():
        cfg, chunks, opt = build(fields, cuda)
        for L in sh.seq_lens:
            for mode in ("block", "ar"):
                for backend in ("flex", "sdpa"):  # a dense-mask OOM must not cost Flex's row
                    ctx.guard(rows, f"{name}/{mode}/L{L}/{backend}",
                              lambda: measure(ctx, sh, cfg, chunks, opt, mode, backend, L),
                              need_s=5.0 if ctx.dry_run else 15.0)
        del chunks, opt
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return {"rows": rows, "block_size": BLOCK_SIZE, "dtype": "bfloat16" if cuda else "float32"}
