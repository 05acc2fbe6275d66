"""Shared builders for the corruption tests (tiny rows, fixed generators)."""

import torch

from megatron_diffusion.corruption import CorruptionConfig, Corruptor

MASK_ID = 1
RANDOM_IDS = torch.arange(10, 60)  # "the vocab minus special tokens"


def make_corruptor(seq_len=16, mode="single", block_size=4, visibility="shared", total_steps=100,
                   **cfg) -> Corruptor:
    return Corruptor(CorruptionConfig(**cfg), seq_len=seq_len, mode=mode, block_size=block_size,
                     visibility=visibility, mask_token_id=MASK_ID, random_token_ids=RANDOM_IDS,
                     total_steps=total_steps)


def clean_rows(num_rows, seq_len, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, 60, (num_rows, seq_len), generator=g)


def gen(seed) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
