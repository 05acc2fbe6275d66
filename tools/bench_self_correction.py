"""Forwards spent by self-correction, with and without the settling forward (docs/BENCHMARKS.md).

    PYTHONPATH=. python tools/bench_self_correction.py CHECKPOINT [--num-prompts 8]
        [--prompt-len 64] [--max-new-tokens 64] [--threshold 0.9]

Decodes the same stdlib prompts (``--ignore-eos``) five ways: without self-correction; with it
and the default ``revisit_threshold`` (the settling forward skipped when every token of a filled
block is at least that probable); with ``revisit_threshold=1``; with a settling forward after
every block (the rule before the revisit threshold existed, set past validation); and with a
revisit window of 2 positions into the previous block (``revisit_window``). Prints
per-row forwards summed, batched model calls, and held-out accuracy against the true
continuations (sampling/bench.py).
"""

import argparse

from megatron_diffusion.sampling import bench
from megatron_diffusion.loading.trained import load_sampler

SETTINGS = {"no self-correction": {}, "self-correct (revisit 0.9)": {"self_correct": True},
            "self-correct, revisit 1.0": {"self_correct": True, "revisit_threshold": 1.0},
            "self-correct, always settle (old rule)": {"self_correct": True},
            "self-correct, revisit window 2": {"self_correct": True, "revisit_window": 2}}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threshold", type=float, default=0.9)
    a = p.parse_args()
    print("| setting | forwards (rows summed) | model calls | held-out accuracy |\n"
          "|---|---:|---:|---:|")
    for name, knobs in SETTINGS.items():
        s = load_sampler(a.checkpoint, max_new_tokens=a.max_new_tokens, threshold=a.threshold,
                         ignore_eos=True, **knobs)
        if "always" in name:
            s.core.cfg.revisit_threshold = 1.01  # no probability reaches it: settle every block
        full = bench.stdlib_prompts(s.tokenizer, a.num_prompts, a.prompt_len,
                                    continuation_len=a.max_new_tokens)
        outs, _ = s.generate_ids([f[:a.prompt_len] for f in full])
        acc = sum(bench.heldout_accuracy(c.tokens, f[a.prompt_len:])
                  for c, f in zip(outs, full)) / len(outs)
        print(f"| {name} | {sum(c.num_forwards for c in outs)} | {s.core.num_model_calls} | "
              f"{acc:.3f} |", flush=True)


if __name__ == "__main__":
    main()
