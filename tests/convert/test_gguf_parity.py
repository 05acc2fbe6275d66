"""The reference model converted from its GGUF equals transformers' own GGUF load (fp32).

SmolLM2-135M-Instruct (Q4_1) from ``reference_model.smollm2_gguf_path()`` is converted once per
session with ``--add-mask-token``; transformers dequantises the same file. Logits, greedy decoding
through our sampler's AR baseline (and self-speculative decoding, which must equal it), held-out
next-token NLL/accuracy through our evaluation, and
the tokenizer are compared. Our logits have one more real column ([MASK], not an HF token) plus
megatron's vocabulary padding, so the first 49152 columns are compared. About 40 s in all on a
2-core CPU (conversion ~12 s, two model loads, 5 x 16 greedy tokens through both).
"""

import sysconfig
from pathlib import Path

import pytest
import torch

from tests.convert.test_gguf_synthetic import causal_logits

pytestmark = pytest.mark.slow

HF_VOCAB = 49152
SNIPPETS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "import os\n\nfor root, dirs, files in os.walk('.'):\n    print(root, len(files))\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n",
    "with open(path, encoding='utf-8') as f:\n    data = json.load(f)  # 3 keys, 10.5%\n",
]
PROMPTS = [
    "def is_prime(n):\n",
    "def reverse_string(s):\n    return",
    "import math\n\ndef circle_area(r):\n",
    "# Sort a list of numbers\ndef sort_numbers(xs):\n",
    "class Point:\n    def __init__(self, x, y):\n",
]


@pytest.fixture(scope="session")
def smollm2_gguf():
    from megatron_diffusion.convert.reference_model import smollm2_gguf_path

    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def smollm2_mcore(smollm2_gguf, tmp_path_factory):
    from megatron_diffusion.convert.gguf_to_mcore import convert_gguf_to_mcore

    out = tmp_path_factory.mktemp("smollm2") / "mc"
    convert_gguf_to_mcore(smollm2_gguf, out, add_mask_token=True, progress=False)
    return out


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def smollm2_ours(smollm2_mcore):
    from megatron_diffusion.loading.trained import load_model

    return load_model(smollm2_mcore)


@pytest.fixture(scope="session")
def our_tokenizer(smollm2_mcore):
    from megatron_diffusion.data.tokenizer import load_tokenizer

    return load_tokenizer(smollm2_mcore / "tokenizer.json")


def test_tokenizer_equals_transformers_gguf_tokenizer(smollm2_gguf, our_tokenizer):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    for text in SNIPPETS + PROMPTS:
        assert our_tokenizer.encode(text) == hf.encode(text, add_special_tokens=False)
    assert (our_tokenizer.eos_id, our_tokenizer.mask_id) == (0, HF_VOCAB)  # <|endoftext|>


def test_logits_equal_transformers_gguf_load(smollm2_hf, smollm2_ours, our_tokenizer):
    for text in SNIPPETS:
        ids = torch.tensor([our_tokenizer.encode(text)])
        with torch.no_grad():
            theirs = smollm2_hf(input_ids=ids).logits
        ours = causal_logits(smollm2_ours.model, ids)[..., :HF_VOCAB]
        assert (ours - theirs).abs().max().item() < 1e-4, text


def test_meta_records_the_model_and_its_stop_tokens(smollm2_ours):
    model = smollm2_ours.config.model
    assert (model.num_layers, model.hidden_size, model.num_attention_heads,
            model.num_query_groups) == (30, 576, 9, 3)
    assert (model.rotary_base, model.vocab_size, model.mask_token_id) == (1e5, 49153, 49152)
    assert model.norm_epsilon == pytest.approx(1e-5) and not model.untie_embeddings_and_output_weights
    generation = smollm2_ours.meta["generation"]
    assert generation["stop_token_ids"] == [2, 0]  # <|im_end|> (GGUF eos), <|endoftext|>
    assert "<|im_start|>" in generation["chat_template"]


def test_greedy_ar_decoding_equals_hf_generate(smollm2_mcore, smollm2_hf, our_tokenizer):
    from megatron_diffusion.loading.trained import load_sampler

    sampler = load_sampler(smollm2_mcore, ar_baseline=True, max_new_tokens=16)
    for prompt in PROMPTS:
        ids = our_tokenizer.encode(prompt)
        (ours,), _ = sampler.generate_ids([ids])
        with torch.no_grad():
            out = smollm2_hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=16,
                                      eos_token_id=[2, 0], pad_token_id=2)
        theirs = out[0, len(ids):].tolist()
        assert len(ours.tokens) >= 8, prompt  # real code, not an immediate stop
        assert ours.tokens == theirs[: len(ours.tokens)] and (
            len(ours.tokens) == len(theirs) or ours.tokens[-1] in (2, 0)), prompt


def test_heldout_next_token_metrics_equal_hf(smollm2_hf, smollm2_ours, our_tokenizer):
    from megatron_diffusion.evaluation.infill import next_token_metrics

    text = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text(encoding="utf-8")
    rows = torch.tensor([our_tokenizer.encode(text)[:192]])
    ours = next_token_metrics(smollm2_ours.model, smollm2_ours.config, rows)
    with torch.no_grad():
        logits = smollm2_hf(input_ids=rows).logits[0, :-1]
    target = rows[0, 1:]
    nll = torch.nn.functional.cross_entropy(logits, target).item()
    accuracy = (logits.argmax(-1) == target).float().mean().item()
    assert ours["nll_nats"] == pytest.approx(nll, abs=1e-4)
    assert ours["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert ours["accuracy"] > 0.4  # a real code model, not noise


def test_self_speculative_decoding_equals_ar_decode_on_smollm2(smollm2_ours, our_tokenizer):
    """The real model read as a block model with a causal clean stream and the shift (the CPT
    recipe's layout): self-speculative greedy output is its AR decode, token for token, with
    drafts that are right and wrong at every position (the oracle of test_speculative.py) and
    with the model's own (untrained) draft blocks; 5 prompts of different lengths in one batch."""
    from megatron_diffusion.sampling.backend import ModelBackend
    from megatron_diffusion.sampling.config import SamplerConfig
    from megatron_diffusion.sampling.sampler import BlockSampler, ModelRules
    from megatron_diffusion.sampling.speculative import SpeculativeSampler
    from tests.sampling.test_speculative import OracleDrafts

    model = smollm2_ours.model
    rules = ModelRules(mode="block", clean_stream="causal", training_block_size=4,
                       logit_shift=True, mask_id=smollm2_ours.config.model.mask_token_id,
                       eos_id=0, pad_id=our_tokenizer.pad_id, max_positions=2048,
                       stop_ids=(2, 0))
    batch = [our_tokenizer.encode(p) for p in PROMPTS]
    ar = BlockSampler(ModelBackend(model), rules,
                      SamplerConfig(max_new_tokens=16, ar_baseline=True).validate()).generate(batch)
    spec_cfg = SamplerConfig(max_new_tokens=16, strategy="speculative", draft_len=3).validate()
    oracle = OracleDrafts(ModelBackend(model), [p + c.tokens + [0] * 8 for p, c in zip(batch, ar)],
                          num_verify=4, p_wrong=0.3)
    for backend in (oracle, ModelBackend(model)):
        spec = SpeculativeSampler(backend, rules, spec_cfg).generate(batch)
        assert [c.tokens for c in spec] == [c.tokens for c in ar]
    counts = {k for c in SpeculativeSampler(oracle, rules, spec_cfg).generate(batch)
              for k in torch.bincount(torch.tensor(c.step_map)).tolist()}
    assert {1, 4} <= counts  # rejections and full acceptances both happened
