"""torchrun worker: decode fixed prompts from a checkpoint under a given TP size.

Every rank writes the tokens it decided (``OUT.rankN.json``): with the vocabulary-parallel logits
gathered, all ranks must take the same decisions, and TP=2 must match TP=1.
"""

import argparse
import json
import sys

import torch.distributed as dist

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from megatron_diffusion.loading.trained import load_sampler  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22], [30, 31, 32, 33, 34]]
    out = {}
    for temperature in (0.0, 1.0):  # greedy, and sampling from the seeded generator
        sampler = load_sampler(a.checkpoint, tensor_model_parallel_size=a.tp, max_new_tokens=12,
                               block_size=4, strategy="fixed", steps_per_block=2,
                               temperature=temperature, seed=5)
        completions, _ = sampler.generate_ids(prompts)
        out[str(temperature)] = [c.tokens for c in completions]
    with open(f"{a.out}.rank{dist.get_rank()}.json", "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
