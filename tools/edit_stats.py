"""Hamming vs Levenshtein distance of edit corruption, and future-block leaks (docs/corruption.md).

    PYTHONPATH=. python tools/edit_stats.py [--seq-len 128] [--rows 2000] [--eps 0.1]
        [--block-size 4] [--windows 0,8,16,32]

Rows of distinct tokens are edited as the Corruptor's edit stage does (levels ``t ~ U(1e-3, 1)``,
masking left out). Printed per setting: mean Hamming and Levenshtein distance to ``x0``, their
ratio (sum over rows), the share of rows where a block holds a token of a later block and the
count of such tokens per 64 positions (meaningful in block mode), and mean/std of ``num_edits / L``.
"""

import argparse

import torch
from rapidfuzz.distance import Levenshtein

from megatron_diffusion.corruption import CorruptionConfig, Corruptor
from megatron_diffusion.corruption.mask import sample_levels
from megatron_diffusion.layout import block_ids

FIRST_TOKEN = 2000  # x0 holds FIRST_TOKEN + position; random tokens are below it


def measure(mode, window, args, generator):
    L, B = args.seq_len, args.block_size
    cfg = CorruptionConfig(edit_max_rate=args.eps, edit_window=window)
    c = Corruptor(cfg, seq_len=L, mode=mode, block_size=B, visibility="shared", mask_token_id=1,
                  random_token_ids=torch.arange(1000, 1500), total_steps=10)
    x0 = torch.arange(FIRST_TOKEN, FIRST_TOKEN + L).repeat(args.rows, 1)
    doc = torch.zeros_like(x0)
    t = sample_levels(args.rows, c.num_blocks, t_min=cfg.t_min, u_max=1.0, warmup=False,
                      generator=generator)
    blocks = block_ids(doc, B, "shared") if mode == "block" else None
    u = c.schedule.u(t.gather(1, blocks) if blocks is not None else t.expand(-1, L))
    y, n = c._edit(x0, doc, torch.ones_like(x0, dtype=torch.bool), u, blocks, generator)
    ham = (y != x0).sum(1).float()
    lev = torch.tensor([Levenshtein.distance(a, b) for a, b in zip(x0.tolist(), y.tolist())])
    src = torch.where(y >= FIRST_TOKEN, y - FIRST_TOKEN, torch.full_like(y, -1))
    leak = src // B > torch.arange(L) // B
    k = n.float() / L
    per_64 = leak.sum(1).float().mean() * 64 / L
    print(f"{mode:6s} window={window:3d}  hamming {ham.mean():6.2f}  levenshtein "
          f"{lev.float().mean():5.2f}  ratio {ham.sum() / lev.sum():5.2f}  rows with a later "
          f"block's token {leak.any(1).float().mean():.3f} ({per_64:.2f} per 64)  "
          f"num_edits/L {k.mean():.4f} +- {k.std():.4f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--windows", default="0,8,16,32")
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    windows = [int(w) for w in args.windows.split(",")]
    for mode in ("single", "block"):
        for window in windows:
            measure(mode, window, args, g)


if __name__ == "__main__":
    main()
