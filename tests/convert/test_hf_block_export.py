"""A block-diffusion checkpoint exported to HF runs in transformers: the training-layout logits
equal ours, and the export's ``block_diffusion.py`` decodes the same tokens as our sampler."""

import importlib.util

import pytest
import torch

from megatron_diffusion.checkpoint.loading import load_model
from megatron_diffusion.convert.mcore_to_hf import convert_mcore_to_hf
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model.inputs import model_inputs
from tests.helpers import make_checkpoint, synthetic_batch

PROMPTS = ["def add(a, b):\n    return", "import json\n\n", "x = [1, 2, 3]\nfor"]
CASES = {
    "shift": (AttentionConfig(mode="block", block_size=4), {"logit_shift": True}),
    "no-shift-causal-clean": (AttentionConfig(mode="block", block_size=4, clean_stream="causal"),
                              {}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    attn, overrides = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    ckpt = make_checkpoint(root / "run", attention=attn, seed=5, **overrides)
    export = convert_mcore_to_hf(ckpt, root / "hf", progress=False)
    spec = importlib.util.spec_from_file_location("block_diffusion", export / "block_diffusion.py")
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)  # the copy in the export, not the package module
    return attn, ckpt, export, helper


def _hf_model(export):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()


def test_training_layout_logits_match_ours(exported):
    attn, ckpt, export, helper = exported
    ours = load_model(ckpt)
    batch = synthetic_batch(attn, rows=2, seq_len=16, seed=3)
    tokens = batch.tokens_BS.clamp(max=ours.config.model.vocab_size - 1)
    tokens[tokens == 60] = ours.config.model.mask_token_id  # helpers' MASK_ID -> this vocab's
    batch.tokens_BS = tokens
    with torch.no_grad():
        want = ours.model(*model_inputs(batch, attn)).float()[..., : ours.config.model.vocab_size]
        inputs = helper.training_inputs(tokens[:, :16], tokens[:, 16:], 4, attn.clean_stream)
        got = _hf_model(export)(**inputs).logits.float()
    mask_id = ours.config.model.mask_token_id
    keep = torch.arange(want.shape[-1]) != mask_id  # ours is -inf there, HF's is a number
    assert (got[..., keep] - want[..., keep]).abs().max().item() < 1e-4


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_export_helper_decodes_like_our_sampler(exported, threshold):
    from megatron_diffusion.checkpoint.loading import load_sampler

    _, ckpt, export, helper = exported
    knobs = (dict(strategy="fixed", steps_per_block=4) if threshold is None else
             dict(strategy="threshold", threshold=threshold))
    sampler = load_sampler(str(ckpt), max_new_tokens=10, block_size=4, **knobs)
    hf = _hf_model(export)
    eos = sampler.tokenizer.eos_id
    for prompt in PROMPTS:
        ids = sampler.tokenizer.encode(prompt)
        (ours,), _ = sampler.generate_ids([ids])
        theirs = helper.generate(hf, ids, max_new_tokens=10, threshold=threshold,
                                 stop_token_ids=[eos])
        assert theirs == ours.tokens, prompt
