"""A block-diffusion checkpoint exported to HF runs in transformers: the training-layout logits
equal ours, the export's ``block_diffusion.py`` decodes the same tokens as our sampler, stops on
every stop id, and loads with ``trust_remote_code`` offline."""

import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from megatron_diffusion.loading.trained import load_model
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
    from megatron_diffusion.loading.trained import load_sampler

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


def test_export_auto_map_names_a_class_of_its_helper(exported):
    from transformers import LlamaForCausalLM

    _, _, export, helper = exported
    module, name = json.loads((export / "config.json").read_text())["auto_map"][
        "AutoModelForCausalLM"].split(".")
    assert module == "block_diffusion" and name == "BlockDiffusionLlamaForCausalLM"
    assert issubclass(getattr(helper, name), LlamaForCausalLM)


REMOTE = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True,
                                             dtype=torch.float32).eval()
ids = model.diffusion_generate(json.loads(sys.argv[2]), max_new_tokens=6, threshold=0.3)
print(json.dumps({"class": type(model).__name__, "ids": ids}))
"""


@pytest.mark.parametrize("overrides,architecture", [({"add_qkv_bias": True}, "Qwen2"),
                                                    ({"qk_layernorm": True}, "Qwen3")])
def test_trust_remote_code_loads_an_export_offline(tmp_path, overrides, architecture):
    """A Qwen2 (QKV bias) or Qwen3 (q/k norms) export as an HF user loads it: another
    directory, no network."""
    ckpt = make_checkpoint(tmp_path / "run", attention=AttentionConfig(mode="block", block_size=4),
                           seed=5, **overrides)
    export = convert_mcore_to_hf(ckpt, tmp_path / "hf", progress=False)
    spec = importlib.util.spec_from_file_location("block_diffusion", export / "block_diffusion.py")
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    prompt = [40, 41, 42, 43, 44]
    want = helper.generate(_hf_model(export), prompt, max_new_tokens=6, threshold=0.3)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    (tmp_path / "user").mkdir()
    done = subprocess.run([sys.executable, "-c", REMOTE, str(export), json.dumps(prompt)],
                          cwd=tmp_path / "user", env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"class": f"BlockDiffusion{architecture}ForCausalLM", "ids": want}


class _AlwaysToken(torch.nn.Module):
    """A model whose every output predicts ``token``; an older export's config: eos 0 only."""

    def __init__(self, token: int, generation_eos):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.token = token
        self.config = SimpleNamespace(
            diffusion={"format": "megatron-diffusion", "attention_mode": "block",
                       "block_size": 2, "clean_stream": "block_causal", "mask_token_id": 9,
                       "logit_shift": False},
            eos_token_id=0, pad_token_id=None, max_position_embeddings=64)
        self.generation_config = SimpleNamespace(eos_token_id=generation_eos)

    def forward(self, input_ids, position_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, 10)
        logits[..., self.token] = 10.0
        return SimpleNamespace(logits=logits)


def test_generate_stops_on_every_stop_id_by_default():
    from megatron_diffusion.convert import hf_block_diffusion as helper

    model = _AlwaysToken(2, generation_eos=[2, 0])
    assert helper.generate(model, [5, 6, 7], max_new_tokens=8) == [2]
    assert helper.default_stop_ids(model) == [0, 2]
    assert helper.generate(model, [5, 6, 7], max_new_tokens=8, stop_token_ids=[0]) == [2] * 8
    model.config.eos_token_id = [2, 0]  # an export whose config.json lists them all
    model.generation_config = None
    assert helper.generate(model, [5, 6, 7], max_new_tokens=4) == [2]
