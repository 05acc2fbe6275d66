"""A toy block-diffusion checkpoint for sampler measurements on a CPU (docs/sampling.md).

Trains a tiny model (4 layers, hidden 128, block size 4) with plain torch AdamW until it has
memorised a few standard-library snippets — the very ones ``bench-sampler`` uses as prompts — so
its predictions are confident and parallel decoding has something to commit. With ``--steps 0``
it writes the randomly initialised model (the KV-cache figure). Not a trainer: the real demo
checkpoint comes from ``megatron-diffusion train``.

    OMP_NUM_THREADS=1 python tools/sampler_toy_checkpoint.py RUN_DIR --steps 800 --docs 4 --doc-len 384

``--mode bidirectional`` trains a full-sequence (no blocks) model instead, for Seed Diffusion
3.4's prefix decoding (``--bidirectional-context``).
"""

import argparse
import time
from pathlib import Path

import torch

from megatron_diffusion.config import RunConfig
from megatron_diffusion.corruption import CorruptionConfig, Corruptor
from megatron_diffusion.data.tokenizer import load_tokenizer, train_tokenizer
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.loss.elbo import diffusion_loss
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model.config import ModelConfig
from megatron_diffusion.model.gpt import build_model, transformer_config
from megatron_diffusion.model.inputs import model_inputs
from megatron_diffusion.parallel.process_groups import initialize_model_parallel
from megatron_diffusion.sampling.bench import stdlib_prompts
from megatron_diffusion.training.checkpoint import checkpoint_meta, save_checkpoint


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--docs", type=int, default=4, help="stdlib snippets to memorise")
    p.add_argument("--doc-len", type=int, default=384, help="tokens per snippet")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--mode", default="block", choices=("block", "bidirectional"),
                   help="training attention mode: block diffusion (B=4) or full-sequence")
    a = p.parse_args()

    run_dir = Path(a.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tok_path = run_dir / "tokenizer.json"
    import sysconfig

    lib = Path(sysconfig.get_paths()["stdlib"])
    texts = [f.read_text(encoding="utf-8", errors="replace")
             for f in sorted((lib / "json").glob("*.py")) + sorted((lib / "email").glob("*.py"))]
    train_tokenizer(texts, 512).save(str(tok_path))
    tok = load_tokenizer(tok_path)

    L = 128
    cfg = RunConfig()
    cfg.attention = AttentionConfig(mode=a.mode, block_size=4)
    cfg.data.blend = [(1.0, "unused.zarr")]
    cfg.data.seq_len = L
    cfg.model = ModelConfig(num_layers=4, hidden_size=128, num_attention_heads=4,
                            num_query_groups=2, ffn_hidden_size=384, vocab_size=tok.vocab_size,
                            mask_token_id=tok.mask_id, make_vocab_size_divisible_by=64,
                            max_position_embeddings=1024)
    initialize_model_parallel(1, 1, seed=0)
    model = build_model(cfg.model, transformer_config(cfg.model))
    docs = stdlib_prompts(tok, a.docs, a.doc_len)
    ids = torch.tensor([t for d in docs for t in d + [tok.eos_id]])
    corruptor = Corruptor(CorruptionConfig(edit_stage_fraction=0.0), seq_len=L,
                          mode="block" if a.mode == "block" else "single",
                          block_size=4, visibility="shared", mask_token_id=tok.mask_id,
                          random_token_ids=torch.tensor([i for i in range(tok.vocab_size)
                                                         if i not in (tok.mask_id, tok.eos_id,
                                                                      tok.pad_id)]),
                          total_steps=max(a.steps, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    start = time.time()
    for step in range(a.steps):
        starts = torch.randint(0, ids.numel() - L, (16,), generator=g)
        rows = torch.stack([ids[s:s + L] for s in starts])
        batch = corruptor.corrupt(rows, torch.zeros_like(rows), step=step, generator=g)
        loss_sum, num_tokens, _ = diffusion_loss(model(*model_inputs(batch, cfg.attention)), batch,
                                                 LossConfig())
        opt.zero_grad()
        (loss_sum / num_tokens).backward()
        opt.step()
        for group in opt.param_groups:  # constant, then linear decay over the last 30%
            group["lr"] = a.lr * min(1.0, (a.steps - step) / (0.3 * a.steps))
        if step % 50 == 0 or step == a.steps - 1:
            print(f"step {step} loss {float(loss_sum / num_tokens):.3f} {time.time() - start:.0f}s",
                  flush=True)
    meta = checkpoint_meta(cfg, tokenizer_hash=tok.hash, step=a.steps)
    print(save_checkpoint(run_dir, a.steps, [model], None, meta=meta, loader_state={},
                          tokenizer_path=str(tok_path)))


if __name__ == "__main__":
    main()
