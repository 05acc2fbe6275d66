#!/usr/bin/env python
"""Training-step time on SmolLM2-135M: our AR step, our block-diffusion steps, and a plain HF loop.

One process, the modes interleaved round-robin (machine load falls on all alike), the same
rows x seq_len of token ids each round, fp32, one optimizer step each:
  ar                 ours: causal, next-token loss (megatron DDP + Adam)
  block_shift        ours: x_t (+) x0, block 4, logit shift, LM head at the read outputs only
  block_shift_full   the same with the LM head at every output (the code before the subset)
  block_shift_ar     + AR term on a causal clean stream (loss.ar_loss_weight 0.5)
  block_shift_ar_full  the same, LM head at every output
  hf                 transformers AutoModelForCausalLM from the same GGUF, torch AdamW,
                     loss.backward() + step()
Our model is the GGUF converted with gguf-to-mcore (plus [MASK]). Prints a markdown table.
  python tools/bench_step_smollm2.py [--rows 2] [--seq-len 128] [--steps 5] [--warmup 1]
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--modes", default="ar,block_shift,block_shift_full,block_shift_ar,"
                                       "block_shift_ar_full,hf")
    a = ap.parse_args()
    modes = a.modes.split(",")

    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from transformers import AutoModelForCausalLM

    from megatron_diffusion.convert.gguf_to_mcore import convert_gguf_to_mcore
    from megatron_diffusion.convert.reference_model import smollm2_gguf_path
    from megatron_diffusion.corruption.config import CorruptionConfig
    from megatron_diffusion.corruption.corruptor import Corruptor
    from megatron_diffusion.corruption.factory import CleanBatcher
    from megatron_diffusion.loss.config import LossConfig
    from megatron_diffusion.masks.config import AttentionConfig
    from megatron_diffusion.model.config import ModelConfig
    from megatron_diffusion.model.gpt import transformer_config
    from megatron_diffusion.parallel.process_groups import initialize_model_parallel
    from megatron_diffusion.training.checkpoint import load_checkpoint, read_meta
    from megatron_diffusion.training.model_setup import build_training_model
    from megatron_diffusion.training.forward_backward import ForwardSpec, forward_backward

    gguf = smollm2_gguf_path()
    initialize_model_parallel(1, 1, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = convert_gguf_to_mcore(gguf, Path(tmp) / "mc", add_mask_token=True, progress=False)
        cfg = ModelConfig(**read_meta(ckpt)["config"]["model"])
        cfg.max_position_embeddings = max(cfg.max_position_embeddings, a.seq_len)
        chunks = build_training_model(cfg, transformer_config(cfg))
        load_checkpoint(ckpt, chunks)
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-5), chunks)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                              dtype=torch.float32).train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-5)

    L, mask_id = a.seq_len, cfg.mask_token_id
    causal, ar_loss = AttentionConfig(mode="causal"), LossConfig(objective="ar")
    block = AttentionConfig(mode="block", block_size=4)
    block_causal_clean = AttentionConfig(mode="block", block_size=4, clean_stream="causal")
    specs = {
        "ar": ForwardSpec(causal, ar_loss),
        "block_shift": ForwardSpec(block, LossConfig(), logit_shift=True),
        "block_shift_full": ForwardSpec(block, LossConfig(), logit_shift=True, head_subset=False),
        "block_shift_ar": ForwardSpec(block_causal_clean, LossConfig(ar_loss_weight=0.5),
                                      logit_shift=True),
        "block_shift_ar_full": ForwardSpec(block_causal_clean, LossConfig(ar_loss_weight=0.5),
                                           logit_shift=True, head_subset=False),
    }
    corruptor = Corruptor(CorruptionConfig(), seq_len=L, mode="block", block_size=4,
                          visibility="shared", mask_token_id=mask_id,
                          random_token_ids=torch.arange(3, 49152), total_steps=100)
    g = torch.Generator().manual_seed(0)

    def batch(spec, x0):  # the corruption runs in the loader workers: not timed
        doc = torch.zeros_like(x0)
        if spec.attention.mode == "causal":
            return CleanBatcher().corrupt(x0, doc, step=0, generator=g)
        return corruptor.corrupt(x0, doc, step=0, generator=g)

    def our_step(spec, b):
        for c in chunks:
            c.zero_grad_buffer()
        opt.zero_grad()
        forward_backward(chunks, [b], spec)
        opt.step()

    def hf_step(x0):
        hf_opt.zero_grad(set_to_none=True)
        hf(input_ids=x0, labels=x0).loss.backward()
        hf_opt.step()

    times = {m: [] for m in modes}
    load = [os.getloadavg()[0]]
    for i in range(a.warmup + a.steps):
        x0 = torch.randint(3, 49152, (a.rows, L), generator=g)
        for m in modes:
            b = None if m == "hf" else batch(specs[m], x0)
            t0 = time.perf_counter()
            hf_step(x0) if m == "hf" else our_step(specs[m], b)
            if i >= a.warmup:
                times[m].append(time.perf_counter() - t0)
        load.append(os.getloadavg()[0])
    med = {m: statistics.median(t) for m, t in times.items()}
    print(f"SmolLM2-135M fp32, {a.rows} rows x {L} tokens, median of {a.steps} steps after "
          f"{a.warmup} warm-up, interleaved; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs; 1-min load average "
          f"{min(load):.1f}-{max(load):.1f}")
    def paired(m, base):  # median over rounds of the round's ratio: load moves both alike
        if m not in times or base not in times:
            return "-"
        r = [t / b for t, b in zip(times[m], times[base])]
        return f"{statistics.median(r):.2f} [{min(r):.2f}-{max(r):.2f}]"

    print("| mode | model tokens/row | step time (s), median [min-max] | / our AR, paired median "
          "[min-max] | / HF, paired |")
    print("|---|---|---|---|---|")
    for m in modes:
        tokens = L if m in ("ar", "hf") else 2 * L
        print(f"| {m} | {tokens} | {med[m]:.2f} [{min(times[m]):.2f}-{max(times[m]):.2f}] | "
              f"{paired(m, 'ar')} | {paired(m, 'hf')} |")
    print(f"HF step / our AR step (goal >= 1.2): {paired('hf', 'ar')}")
    for m in ("block_shift", "block_shift_full", "block_shift_ar", "block_shift_ar_full"):
        print(f"{m} / our AR step (goal <= 1.6): {paired(m, 'ar')}")


if __name__ == "__main__":
    main()
