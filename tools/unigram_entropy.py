#!/usr/bin/env python
"""Unigram entropy (nats/token) of a store split: the loss of a model that ignores context.

A trained model's validation loss should end clearly below it. Usage:
    python tools/unigram_entropy.py STORE.zarr [--split validation]
"""

import argparse
import math

import numpy as np

from megatron_diffusion.data.store import TokenStore


def unigram_entropy(store: TokenStore, split: str = "train") -> float:
    offsets = store.read_doc_array("doc_offsets")
    splits = store.read_doc_array("split")
    want = 0 if split == "train" else 1
    counts = np.zeros(store.vocab_size, dtype=np.int64)
    for d in np.nonzero(splits == want)[0]:
        counts += np.bincount(store.read_tokens(int(offsets[d]), int(offsets[d + 1])),
                              minlength=store.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--split", choices=("train", "validation"), default="train")
    a = ap.parse_args()
    h = unigram_entropy(TokenStore(a.store), a.split)
    print(f"unigram entropy of {a.store} ({a.split}): {h:.3f} nats/token "
          f"({h / math.log(2):.3f} bits)")


if __name__ == "__main__":
    main()
