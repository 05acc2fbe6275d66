"""Corruption throughput (clean tokens per second) in one process, as a data-loader worker sees it.

    python tools/bench_corruption.py [--rows 8] [--seq-lens 2048 8192] [--threads 1] [--repeats 5]

Cases: 'mask' (single mode, mask stage), 'block' (block mode, B=4, mask stage), 'edit' (single
mode, edit stage with eps = 0.1), 'block+edit' (block mode, edit stage). Rows hold 4 packed
documents and no prompt. Prints the median over ``--repeats`` timed calls after one warm-up call.
"""

import argparse
import statistics
import time

import torch

from megatron_diffusion.corruption import CorruptionConfig, Corruptor

CASES = {  # name: (mode, step out of 1000 total steps)
    "mask": ("single", 0),
    "block": ("block", 0),
    "edit": ("single", 999),
    "block+edit": ("block", 999),
}


def bench(case: str, seq_len: int, rows: int, repeats: int, visibility: str) -> float:
    mode, step = CASES[case]
    corruptor = Corruptor(CorruptionConfig(edit_max_rate=0.1), seq_len=seq_len, mode=mode,
                          block_size=4, visibility=visibility, mask_token_id=0,
                          random_token_ids=torch.arange(3, 50_000), total_steps=1000)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 50_000, (rows, seq_len), generator=g)
    doc = (torch.arange(seq_len) * 4 // seq_len).expand(rows, seq_len).contiguous()
    corruptor.corrupt(tokens, doc, step=step, generator=g)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        corruptor.corrupt(tokens, doc, step=step, generator=g)
        times.append(time.perf_counter() - start)
    return rows * seq_len / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8, help="rows per corrupt() call")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--visibility", choices=["shared", "isolated"], default="isolated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"rows={args.rows} threads={args.threads} visibility={args.visibility} "
          f"(clean tokens per second, median of {args.repeats})")
    print(f"{'case':<12}" + "".join(f"{'L=' + str(L):>14}" for L in args.seq_lens))
    for case in CASES:
        rates = [bench(case, L, args.rows, args.repeats, args.visibility) for L in args.seq_lens]
        print(f"{case:<12}" + "".join(f"{r / 1e6:>12.2f} M" for r in rates))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
