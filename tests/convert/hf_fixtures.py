"""Tiny random HF models built locally with ``transformers`` (nothing from a hub)."""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from tests.helpers import stdlib_texts


def make_hf_tokenizer(path: Path, vocab_size: int, special: list[str]) -> Tokenizer:
    """A byte-level BPE with the given special tokens (first ids), like a foreign model's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(stdlib_texts(12), trainer=trainer)
    tok.save(str(path))
    return tok


def make_hf_model(out: Path, arch: str, *, tied: bool, vocab_rows: int | None = None,
                  tokenizer_vocab: int = 300, dtype=torch.float32, seed: int = 0,
                  max_shard_size: str | None = None, num_layers: int = 4,
                  special: list[str] | None = None, **overrides) -> Path:
    """``arch``: 'llama' (eos '</s>', no [MASK]), 'qwen2' (eos '<|endoftext|>', QKV bias) or
    'qwen3' (eos '<|endoftext|>', q/k norms; ``head_dim=`` in ``overrides`` sets the head width).
    ``vocab_rows`` > tokenizer size leaves spare embedding rows, as Qwen2 does. ``special``:
    other special tokens (the last one is ``eos_token_id``)."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    out.mkdir(parents=True, exist_ok=True)
    special = special or (["<s>", "</s>"] if arch == "llama" else ["<|endoftext|>"])
    tok = make_hf_tokenizer(out / "tokenizer.json", tokenizer_vocab, special)
    eos = tok.token_to_id(special[-1])
    kw = dict(vocab_size=vocab_rows or tok.get_vocab_size(), hidden_size=64,
              intermediate_size=96, num_hidden_layers=num_layers, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
              tie_word_embeddings=tied, eos_token_id=eos,
              bos_token_id=tok.token_to_id("<s>") if arch == "llama" else None)
    kw.update(overrides)
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(rope_theta=500000.0, **kw))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**kw))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**kw))
    with torch.no_grad():  # random init gives zero biases / unit norms: make every weight count
        # (q/k norms included: a map that swapped q_norm and k_norm must change the logits)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model = model.to(dtype)
    save_kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **save_kw)
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": special[-1]}))
    return out


def hf_state(hf_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out
