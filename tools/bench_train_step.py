#!/usr/bin/env python
"""Step time of diffusion training vs AR training of the same model, in one process.

Modes, interleaved round-robin so machine load affects all alike:
  ar            causal attention, next-token loss on the clean row
  mask          single-sequence masked diffusion (bidirectional, ELBO)  -- target <= 1.05x AR
  block         block diffusion over x_t (+) x0 (2L tokens: about 2x the work, reported)
Prints a markdown table. Usage:
  python tools/bench_train_step.py [--steps 20] [--seq-len 256] [--layers 4] [--hidden 256]
"""

import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2048)
    a = ap.parse_args()

    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_diffusion.corruption.config import CorruptionConfig
    from megatron_diffusion.corruption.corruptor import Corruptor
    from megatron_diffusion.corruption.factory import CleanBatcher
    from megatron_diffusion.loss.config import LossConfig
    from megatron_diffusion.masks.config import AttentionConfig
    from megatron_diffusion.model.config import ModelConfig
    from megatron_diffusion.model.gpt import transformer_config
    from megatron_diffusion.parallel.process_groups import initialize_model_parallel
    from megatron_diffusion.training.model_setup import build_training_model
    from megatron_diffusion.training.forward_backward import ForwardSpec, forward_backward

    initialize_model_parallel(1, 1, seed=0)
    L, mask_id = a.seq_len, a.vocab - 1
    cfg = ModelConfig(num_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.hidden // 64,
                      vocab_size=a.vocab, mask_token_id=mask_id, max_position_embeddings=L)
    chunks = build_training_model(cfg, transformer_config(cfg))
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-4), chunks)
    g = torch.Generator().manual_seed(0)
    rand_ids = torch.arange(3, a.vocab - 1)

    def batches(mode):
        x0 = torch.randint(3, mask_id, (a.rows, L), generator=g)
        doc = torch.zeros(a.rows, L, dtype=torch.long)
        if mode == "ar":
            return CleanBatcher().corrupt(x0, doc, step=0, generator=g)
        c = Corruptor(CorruptionConfig(), seq_len=L, mode="block" if mode == "block" else "single",
                      block_size=4, visibility="shared", mask_token_id=mask_id,
                      random_token_ids=rand_ids, total_steps=100)
        return c.corrupt(x0, doc, step=0, generator=g)

    modes = {"ar": (AttentionConfig(mode="causal"), LossConfig(objective="ar")),
             "mask": (AttentionConfig(mode="bidirectional"), LossConfig()),
             "block": (AttentionConfig(mode="block", block_size=4), LossConfig())}
    times = {m: [] for m in modes}
    for i in range(a.warmup + a.steps):
        for m, (attn, loss_cfg) in modes.items():
            b = batches(m)
            t0 = time.perf_counter()
            for c in chunks:
                c.zero_grad_buffer()
            forward_backward(chunks, [b], ForwardSpec(attn, loss_cfg))
            opt.step()
            if i >= a.warmup:
                times[m].append(time.perf_counter() - t0)
    ar = statistics.median(times["ar"])
    print(f"model: {a.layers} layers, hidden {a.hidden}, vocab {a.vocab}; {a.rows} rows x {L} tokens; "
          f"median of {a.steps} steps; torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| mode | model input tokens/row | step time (s) | ratio vs AR |")
    print("|---|---|---|---|")
    for m in modes:
        t = statistics.median(times[m])
        print(f"| {m} | {2 * L if m == 'block' else L} | {t:.4f} | {t / ar:.3f} |")


if __name__ == "__main__":
    main()
