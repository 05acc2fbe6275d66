"""The tokenizer a GGUF describes -> an HF ``tokenizer.json`` (then ``hf_tokenizer`` adds [MASK]).

A GGUF carries no ``tokenizer.json``: ``tokenizer.ggml.*`` holds the vocabulary (``tokens``, in
id order), ``token_type`` (1 normal, 3 control, 4 user-defined, ...), ``merges`` ("a b" pairs in
rank order), ``pre`` (llama.cpp's name for the pre-tokenizer), the special ids and
``tokenizer.chat_template``. Only byte-level BPE (``tokenizer.ggml.model == "gpt2"``: GPT-2,
Llama 3, Qwen2, SmolLM, StarCoder vocabularies) is rebuilt; a sentencepiece vocabulary
(``"llama"``) or a file without merges is refused by name.

The pre-tokenizer follows llama.cpp's ``llama-vocab.cpp`` for the ``pre`` name: the GPT-2 split
for ``default``/``gpt2``; for ``smollm``/``starcoder``/``refact``/``codeshell``/``command-r``/
``exaone`` every digit is split off first (``\\p{N}``), as the original SmolLM/StarCoder tokenizers do (their vocabularies
have no multi-digit tokens, so this equals the plain GPT-2 split on them); the Llama-3 and Qwen2
regexes for those families. Control tokens become special added tokens and user-defined ones
plain added tokens, so both are matched whole (as llama.cpp and transformers' GGUF loader do).
Tokens not spelled in the byte-level alphabet are respelled byte by byte (transformers does the
same), so every id keeps its token.
"""

import json

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from megatron_diffusion.convert.gguf_file import field
from megatron_diffusion.errors import UsageError

_GPT2_SPLIT = None  # ByteLevel's built-in regex
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    "default": ("gpt2", _GPT2_SPLIT), "gpt2": ("gpt2", _GPT2_SPLIT),
    "smollm": ("digits", _GPT2_SPLIT), "starcoder": ("digits", _GPT2_SPLIT),
    "refact": ("digits", _GPT2_SPLIT), "codeshell": ("digits", _GPT2_SPLIT),
    "command-r": ("digits", _GPT2_SPLIT), "exaone": ("digits", _GPT2_SPLIT),
    "llama3": ("regex", _LLAMA3_SPLIT), "llama-bpe": ("regex", _LLAMA3_SPLIT),
    "llama-v3": ("regex", _LLAMA3_SPLIT), "smaug-bpe": ("regex", _LLAMA3_SPLIT),
    "qwen2": ("regex", _QWEN2_SPLIT), "deepseek-r1-qwen": ("regex", _QWEN2_SPLIT),
}
"""llama.cpp ``tokenizer.ggml.pre`` -> how text is split before BPE."""
CONTROL, USER_DEFINED = 3, 4


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the byte-level alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _pre_tokenizer(pre: str):
    if pre not in PRE_TOKENIZERS:
        raise UsageError(f"--gguf: tokenizer.ggml.pre={pre!r} is not supported; supported: "
                         f"{', '.join(PRE_TOKENIZERS)}")
    kind, split = PRE_TOKENIZERS[pre]
    if kind == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                 use_regex=True)])
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                             use_regex=False)])


def _vocab(tokens: list[str]) -> dict[str, int]:
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    return {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
            for i, t in enumerate(tokens)}


def gguf_tokenizer(reader, path) -> tuple[str, dict]:
    """``(tokenizer.json text, HF tokenizer_config dict)`` from the GGUF metadata."""
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise UsageError(f"--gguf: tokenizer.ggml.model={model!r} is not supported; only "
                         "byte-level BPE ('gpt2': GPT-2/Llama 3/Qwen2/SmolLM vocabularies)")
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = field(reader, "tokenizer.ggml.merges")
    if not tokens:
        raise UsageError(f"--gguf: {path} has no tokenizer.ggml.tokens")
    if not merges:
        raise UsageError(f"--gguf: {path} has a BPE tokenizer without merges "
                         "(tokenizer.ggml.merges is missing or empty)")
    types = field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    bpe = models.BPE(vocab=_vocab(tokens), merges=[tuple(m.split(" ", 1)) for m in merges],
                     fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = _pre_tokenizer(field(reader, "tokenizer.ggml.pre", "default"))
    tok.decoder = decoders.ByteLevel()
    spelled = set(_bytes_to_unicode().values())
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types)
                            if kind == CONTROL and set(t) <= spelled])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, kind in zip(tokens, types) if kind == USER_DEFINED])
    return tok.to_str(), _tokenizer_config(reader, tokens)


def _tokenizer_config(reader, tokens: list[str]) -> dict:
    """The HF ``tokenizer_config.json`` keys a GGUF states (kept for the export)."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for name in ("bos", "eos", "unknown", "padding"):
        token_id = field(reader, f"tokenizer.ggml.{name}_token_id")
        if token_id is not None and 0 <= token_id < len(tokens):
            key = {"unknown": "unk", "padding": "pad"}.get(name, name)
            config[f"{key}_token"] = tokens[token_id]
    for key in ("add_bos_token", "add_eos_token"):
        value = field(reader, f"tokenizer.ggml.{key}")
        if value is not None:
            config[key] = bool(value)
    template = field(reader, "tokenizer.chat_template")
    if template is not None:
        config["chat_template"] = template
    return json.loads(json.dumps(config))
