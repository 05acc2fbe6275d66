"""Seed Diffusion 3.4's prefix decoding of a bidirectional model vs the full-sequence decode.

    PYTHONPATH=. python tools/bench_bidirectional.py CHECKPOINT [--block-sizes 4,16]
        [--num-prompts 4] [--prompt-len 64] [--max-new-tokens 64] [--threshold 0.9]
        [--repeats 2]

For each block size, three decoders of the same bidirectional checkpoint run interleaved on the
same stdlib prompts (``--ignore-eos``: fixed-length rows): ``full`` (every step feeds the whole
generation, future blocks as [MASK], no cache: the reference), ``prefix-exact`` (prompt +
finished blocks + current block, recomputed every step) and ``prefix-cache`` (the same, finished
blocks cached when final: approximate). Printed: tokens/s (median of ``--repeats``), forwards,
agreement with ``full`` and with ``prefix-exact``, and held-out accuracy against the files'
true continuations (bench.py's definitions); then, per decoder, how many prompts' first block
changes between ``--max-new-tokens B`` and the configured length. docs/BENCHMARKS.md has the
figures.
"""

import argparse

import numpy as np

from megatron_diffusion.sampling import bench
from megatron_diffusion.loading.trained import load_sampler

VARIANTS = {"full": dict(bidirectional_context="full", kv_cache=False),
            "prefix-exact": dict(bidirectional_context="prefix", kv_cache=False),
            "prefix-cache": dict(bidirectional_context="prefix", kv_cache=True)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--block-sizes", default="4,16")
    p.add_argument("--num-prompts", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    base = load_sampler(a.checkpoint, max_new_tokens=a.max_new_tokens, threshold=a.threshold,
                        ignore_eos=True)
    full = bench.stdlib_prompts(base.tokenizer, a.num_prompts, a.prompt_len,
                                continuation_len=a.max_new_tokens)
    prompts = [ids[:a.prompt_len] for ids in full]
    truths = [ids[a.prompt_len:] for ids in full]
    print("| block | decoder | tokens/s | forwards | agreement vs full | agreement vs "
          "prefix-exact | held-out accuracy |\n|---|---|---:|---:|---:|---:|---:|")
    for B in (int(b) for b in a.block_sizes.split(",")):
        decoders = {name: base.with_settings(block_size=B, **kw)
                    for name, kw in VARIANTS.items()}
        res = bench.measure_interleaved(decoders, prompts, repeats=a.repeats)
        outs = {name: r["_completions"] for name, r in res.items()}

        def agree(name, ref):
            return np.mean([bench.agreement(c.tokens, r.tokens)
                            for c, r in zip(outs[name], outs[ref])])

        for name, r in res.items():
            acc = np.mean([bench.heldout_accuracy(c.tokens, t) for c, t in zip(outs[name], truths)])
            print(f"| {B} | {name} | {r['tokens_per_second']:.1f} | {r['num_forwards']} | "
                  f"{agree(name, 'full'):.3f} | {agree(name, 'prefix-exact'):.3f} | {acc:.3f} |",
                  flush=True)
        changed = block0_changes(base, prompts, B)
        print(f"block {B}: prompts whose first block changes between --max-new-tokens {B} and "
              f"{a.max_new_tokens}: " + ", ".join(f"{k} {v}/{len(prompts)}"
                                                  for k, v in changed.items()), flush=True)


def block0_changes(base, prompts, block_size):
    """Prompts whose first block differs between ``max_new_tokens = block_size`` and the
    configured ``max_new_tokens``, per decoder."""
    out = {}
    for name, kw in VARIANTS.items():
        short, long = (base.with_settings(block_size=block_size, max_new_tokens=n, **kw)
                       .generate_ids(prompts)[0] for n in (block_size, base.cfg.max_new_tokens))
        out[name] = sum(a.tokens[:block_size] != b.tokens[:block_size]
                        for a, b in zip(short, long))
    return out


if __name__ == "__main__":
    main()
