"""Tokenizers across the conversion: an HF ``tokenizer.json`` in, ours out, and back.

Import: a masked diffusion LM needs a ``[MASK]`` token (docs/method.md 1). ``--add-mask-token`` adds
it as a special token at the next free id (``len(tokenizer)``); if that id is past the HF
embedding, the embedding (and an untied output layer) grows by one row, initialised as described
in ``tensor_map.new_row_init``. If the HF embedding already has spare rows (Qwen2 pads its
vocabulary), ``[MASK]`` takes the first spare row and no row is added; that row keeps its HF
value. No pad token is added: ``data.tokenizer`` pads with EOS when ``<|pad|>`` is absent, and
padding never carries loss. The result must be loadable by ``data.tokenizer.from_json_string``.
Its end-of-document token (what the data tools put between packed documents) is not always the
model's stop token: see ``check_document_eos``; ``--eos-token`` names it explicitly. The GGUF
import (``gguf_tokenizer``) builds a ``tokenizer.json`` first and goes through the same
``prepare_tokenizer_json``.

Export: ``tokenizer.json`` unchanged plus a ``tokenizer_config.json`` naming the special tokens,
so ``transformers.AutoTokenizer.from_pretrained`` loads it as a ``PreTrainedTokenizerFast``; a
converted model's ``eos_token``/``pad_token`` are its source's, whatever the document EOS.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer

from megatron_diffusion.data.tokenizer import (
    MASK_TOKEN,
    LoadedTokenizer,
    find_eos_id,
    from_json_string,
    hf_special_token_names,
)
from megatron_diffusion.errors import UsageError


@dataclass(frozen=True)
class PreparedTokenizer:
    json: str
    """The tokenizer.json text for the converted checkpoint."""
    loaded: LoadedTokenizer
    added_mask_token: bool
    hf_tokenizer_config: dict | None
    """The HF ``tokenizer_config.json`` (bos/eos names, chat template), kept for the export."""


def prepare_tokenizer(hf_dir, *, add_mask_token: bool, hf_vocab_size: int,
                      eos_token: str | None = None) -> PreparedTokenizer:
    """Read ``hf_dir/tokenizer.json`` (and ``tokenizer_config.json``) and prepare it."""
    path = Path(hf_dir) / "tokenizer.json"
    if not path.is_file():
        raise UsageError(f"--hf: {path} does not exist (a fast tokenizer is needed; save one with "
                         "AutoTokenizer.from_pretrained(...).save_pretrained(DIR))")
    cfg_path = Path(hf_dir) / "tokenizer_config.json"
    hf_cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else None
    return prepare_tokenizer_json(path.read_text(encoding="utf-8"), str(path), option="--hf",
                                  add_mask_token=add_mask_token, hf_vocab_size=hf_vocab_size,
                                  eos_token=eos_token, hf_tokenizer_config=hf_cfg)


def prepare_tokenizer_json(text: str, where: str, *, option: str, add_mask_token: bool,
                           hf_vocab_size: int, eos_token: str | None = None,
                           hf_tokenizer_config: dict | None = None) -> PreparedTokenizer:
    """Add ``[MASK]`` if asked, and check the end-of-document token (``--eos-token``)."""
    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise UsageError(f"{option}: {where} is not a valid tokenizer.json ({e})") from None
    added = False
    if tok.token_to_id(MASK_TOKEN) is None:
        if not add_mask_token:
            raise UsageError(f"{option}: {where} has no {MASK_TOKEN} token; pass --add-mask-token "
                             "to add it (diffusion training needs one)")
        size_before = tok.get_vocab_size(with_added_tokens=True)
        if size_before > hf_vocab_size:
            raise UsageError(f"{option}: {where} has {size_before} tokens but the model's "
                             f"embedding only {hf_vocab_size} rows (config.json vocab_size)")
        tok.add_special_tokens([AddedToken(MASK_TOKEN, special=True, normalized=False)])
        text, added = tok.to_str(), True
    check_document_eos(tok, where, option, eos_token)
    loaded = from_json_string(text, where)
    if not added and loaded.vocab_size > hf_vocab_size:
        raise UsageError(f"{option}: {where} has {loaded.vocab_size} tokens, more than the model's "
                         f"{hf_vocab_size} embedding rows")
    return PreparedTokenizer(json=text, loaded=loaded, added_mask_token=added,
                             hf_tokenizer_config=hf_tokenizer_config)


def check_document_eos(tok: Tokenizer, where: str, option: str, eos_token: str | None) -> int:
    """The id of the token that ends documents in our data (``data.tokenizer.find_eos_id``).

    It need not be the model's stop token: an Instruct model stops on ``<|im_end|>`` (its
    ``eos_token_id``) while its documents end with ``<|endoftext|>``; both are recorded as stop
    tokens (``generation.stop_token_ids``). ``--eos-token`` states the document EOS explicitly
    and is refused if the data tools would separate documents with another token."""
    found = find_eos_id(tok)
    if eos_token is not None:
        wanted = tok.token_to_id(eos_token)
        if wanted is None:
            raise UsageError(f"--eos-token: {eos_token!r} is not a token of {where}")
        if found is not None and wanted != found:
            raise UsageError(
                f"--eos-token: {eos_token!r} (id {wanted}) is not the token the data tools end "
                f"documents with: {tok.id_to_token(found)!r} (id {found}, data/tokenizer.py "
                "find_eos_id); stop tokens other than it are kept in meta.json generation")
    if found is None:
        raise UsageError(
            f"{option}: {where} has no end-of-document token the data tools recognise "
            "('<|endoftext|>', or a special '</s>'/'<|end_of_text|>'-like token)")
    return found


def export_tokenizer_files(out_dir, tokenizer_json_path, *, max_length: int,
                           source_config: dict | None,
                           chat_template: str | None = None) -> LoadedTokenizer:
    """Copy ``tokenizer.json`` and write ``tokenizer_config.json``; returns the loaded ids.

    ``source_config``: the converted model's own ``tokenizer_config.json`` (``None`` for our
    own tokenizer); its ``eos_token``/``pad_token`` are kept as they were
    (``data.tokenizer.hf_special_token_names``), so ``AutoTokenizer`` gives the export the
    source's EOS and pad; the document EOS, if it is another token, is a stop id of
    ``generation_config.json`` (``convert.generation``)."""
    out_dir = Path(out_dir)
    text = Path(tokenizer_json_path).read_text(encoding="utf-8")
    loaded = from_json_string(text, str(tokenizer_json_path))
    (out_dir / "tokenizer.json").write_text(text, encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast",
              "model_max_length": max_length,
              "clean_up_tokenization_spaces": False,
              **hf_special_token_names(loaded, source_config),
              "mask_token": MASK_TOKEN}
    src = dict(source_config or {})
    if chat_template is not None:
        src["chat_template"] = chat_template
    for key in ("bos_token", "unk_token", "chat_template", "add_bos_token", "add_eos_token"):
        if src.get(key) is not None:
            config[key] = src[key]
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return loaded
