"""Tiny models and rules for the sampler tests (2 layers, hidden 64, fp32, one process)."""

import torch

from megatron_diffusion.model import weights
from megatron_diffusion.model.gpt import build_model, transformer_config
from megatron_diffusion.parallel.process_groups import initialize_model_parallel
from megatron_diffusion.sampling.sampler import ModelRules
from tests.helpers import MASK_ID, seeded_full_weights, tiny_model_config

EOS_ID = 59
PAD_ID = 58


def tiny_model(**overrides) -> torch.nn.Module:
    """A randomly initialised ``DiffusionGPTModel`` (deterministic weights by name)."""
    initialize_model_parallel(1, 1, seed=0)
    cfg = tiny_model_config(num_layers=2, **overrides)
    model = build_model(cfg, transformer_config(cfg))
    shapes = {k: v.shape for k, v in weights.local_to_full([model]).items()}
    weights.load_full([model], seeded_full_weights(shapes))
    return model.eval()


def rules(mode="block", clean_stream="block_causal", block_size=4, logit_shift=False,
          max_positions=64) -> ModelRules:
    return ModelRules(mode=mode, clean_stream=clean_stream, training_block_size=block_size,
                      logit_shift=logit_shift, mask_id=MASK_ID, eos_id=EOS_ID, pad_id=PAD_ID,
                      max_positions=max_positions)


def prompts(lengths, seed=0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (n,), generator=g).tolist() for n in lengths]
