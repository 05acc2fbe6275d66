"""Byte-level BPE tokenizer with the special tokens diffusion training needs.

A masked diffusion LM needs three special tokens beyond a causal LM's vocabulary:

* ``<|endoftext|>`` (EOS): separates packed documents and, appended 1-4 times after each SFT
  sample, teaches the model to stop at a variable length (docs/method.md 4);
* ``[MASK]``: the absorbing state of the forward process (docs/method.md 1-2);
* ``<|pad|>``: padding for batched sampling requests.

Training uses HF ``tokenizers`` (byte-level pre-tokenizer, so every byte string round-trips).
Special tokens are never produced from corpus text: ``encode_special_tokens`` is set, so a source
file containing the string ``[MASK]`` encodes it as ordinary bytes. Prompts are different
(``encode_prompt``): a chat template spells its turns with special tokens (``<|im_start|>``), and
HF's tokenizer encodes each as its one id; so do we, except ``[MASK]``, which stays text (a mask
id in the context is noise to the model, never an instruction). A store records the
tokenizer's hash (sha256 of the canonical JSON: keys sorted, no whitespace) so a run refuses a
store tokenized with a different vocabulary.
"""

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from megatron_diffusion.errors import UsageError

EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "[MASK]"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, MASK_TOKEN, PAD_TOKEN)
FOREIGN_EOS_NAMES = ("endoftext", "endofsentence")
"""End-of-document tokens of converted tokenizers, lowercased with punctuation removed."""


@dataclass(frozen=True)
class LoadedTokenizer:
    """A tokenizer with the ids of its special tokens and its hash."""

    tokenizer: Tokenizer
    path: str
    eos_id: int
    mask_id: int
    pad_id: int
    vocab_size: int
    """Number of ids including added special tokens (the model's embedding rows)."""
    hash: str
    """sha256 of the canonical tokenizer JSON (see ``tokenizer_hash``)."""

    def encode(self, text: str) -> list[int]:
        """Corpus text -> ids; special-token text is encoded as ordinary bytes."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        """Prompt text -> ids as HF's tokenizer gives them: the text is split at the special
        tokens it spells (``<|im_start|>`` -> its one id; ``[MASK]`` excepted, see the module
        docstring), and each piece between them is encoded as ``encode`` does."""
        ids: list[int] = []
        pieces = self._prompt_specials.split(text) if self._prompt_specials else [text]
        for i, piece in enumerate(pieces):
            if i % 2:  # the split pattern's group: a special token (with any stripped spaces)
                ids.append(self._prompt_special_ids[piece.strip()])
            elif piece:
                ids += self.encode(piece)
        return ids

    @functools.cached_property
    def _prompt_special_ids(self) -> dict[str, int]:
        added = self.tokenizer.get_added_tokens_decoder()
        return {t.content: i for i, t in added.items() if t.special and i != self.mask_id}

    @functools.cached_property
    def _prompt_specials(self) -> re.Pattern | None:
        """One group matching any special token, longest first; ``lstrip``/``rstrip`` tokens
        take the whitespace beside them, as ``tokenizers`` does."""
        added = self.tokenizer.get_added_tokens_decoder()
        tokens = sorted((added[i] for i in self._prompt_special_ids.values()),
                        key=lambda t: -len(t.content))
        alternatives = [(r"\s*" if t.lstrip else "") + re.escape(t.content)
                        + (r"\s*" if t.rstrip else "") for t in tokens]
        return re.compile("(" + "|".join(alternatives) + ")") if alternatives else None

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def tokenizer_hash(tokenizer_json: str) -> str:
    """sha256 of the tokenizer JSON with sorted keys and no whitespace (stable across saves)."""
    canonical = json.dumps(json.loads(tokenizer_json), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def tokenizer_file_hash(path: str | Path, option: str) -> str:
    """``tokenizer_hash`` of the file ``path``; an unreadable file is one line naming ``option``."""
    try:
        return tokenizer_hash(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"{option}: cannot read {path} ({e.strerror})") from None
    except ValueError:  # UnicodeDecodeError, JSONDecodeError
        raise UsageError(f"{option}: {path} is not a tokenizer.json (not JSON)") from None


def check_tokenizer_hash(message: str, found: tuple[str, str | None],
                         expected: tuple[str, str | None], hint: str = "") -> None:
    """Refuse a tokenizer whose hash is not the one recorded where it is used (a vocabulary of
    the same size is not enough: its ids mean other tokens): ``UsageError(message (FOUND_LABEL
    HASH..., EXPECTED_LABEL HASH...)hint)``. ``found``/``expected`` are (label, hash) pairs; a
    missing hash (a checkpoint from before hashes were recorded) is not compared."""
    (found_label, found_hash), (expected_label, expected_hash) = found, expected
    if found_hash is None or expected_hash is None or found_hash == expected_hash:
        return
    raise UsageError(f"{message} ({found_label} {found_hash[:12]}..., {expected_label} "
                     f"{expected_hash[:12]}...){hint}")


def find_eos_id(tok: Tokenizer) -> int | None:
    """Id of the end-of-document token: ``<|endoftext|>``, else (a converted Llama/Qwen2/
    Seed-Coder tokenizer) the lowest-id special token spelled ``</s>`` or, ignoring case and
    punctuation, "end of text"/"end of sentence" (``<|end_of_text|>``,
    ``<｜end▁of▁sentence｜>``, ...)."""
    tid = tok.token_to_id(EOS_TOKEN)
    if tid is not None:
        return tid
    for tid, added in sorted(tok.get_added_tokens_decoder().items()):
        name = "".join(c for c in added.content.lower() if c.isascii() and c.isalnum())
        if added.special and (added.content == "</s>" or name in FOREIGN_EOS_NAMES):
            return tid
    return None


def from_json_string(tokenizer_json: str, path: str = "<string>") -> LoadedTokenizer:
    """Build a ``LoadedTokenizer``; UsageError naming ``path`` if EOS or MASK is missing."""
    try:
        tok = Tokenizer.from_str(tokenizer_json)
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise UsageError(f"tokenizer {path}: not a valid tokenizer.json ({e})") from None
    ids = {}
    for name, token in (("eos", EOS_TOKEN), ("mask", MASK_TOKEN)):
        tid = find_eos_id(tok) if name == "eos" else tok.token_to_id(token)
        if tid is None and name == "mask":  # an HF/GGUF model's own tokenizer: use the converted one
            raise UsageError(
                f"tokenizer {path}: lacks the mask token {token!r}; for a converted model use the "
                "OUT/tokenizer.json written by `megatron-diffusion convert hf-to-mcore "
                "--add-mask-token` (or gguf-to-mcore), else train one with "
                "`megatron-diffusion train-tokenizer`"
            )
        if tid is None:
            raise UsageError(
                f"tokenizer {path}: lacks the {name} token {token!r}; "
                f"train one with `megatron-diffusion train-tokenizer` or add it as a special token"
            )
        ids[name] = tid
    # Raw text that happens to contain "[MASK]" or "<|endoftext|>" (code about tokenizers does)
    # must be encoded as text: a real mask id in x0 would corrupt the diffusion targets and a
    # stray EOS would split a document. Special ids are only ever inserted by ids.
    tok.encode_special_tokens = True
    # pad is optional in foreign tokenizers: fall back to EOS (padding never carries loss).
    pad_id = tok.token_to_id(PAD_TOKEN)
    return LoadedTokenizer(
        tokenizer=tok,
        path=path,
        eos_id=ids["eos"],
        mask_id=ids["mask"],
        pad_id=ids["eos"] if pad_id is None else pad_id,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        hash=tokenizer_hash(tokenizer_json),
    )


def hf_special_token_names(tokenizer: LoadedTokenizer, source_config: dict | None) -> dict:
    """``eos_token``/``pad_token`` as an HF ``tokenizer_config.json`` names them (the export's,
    and what a chat template sees).

    A converted model (``source_config``: the source's ``tokenizer_config.json``) keeps the
    source's, present or absent, as written: an Instruct model's ``eos_token`` is its turn end
    (``<|im_end|>``), not the document EOS of ``eos_id``, and a model without a pad token gets
    none. Our own tokenizer (``None``) names ``eos_id`` and ``pad_id``."""
    if source_config is None:
        tok = tokenizer.tokenizer
        return {"eos_token": tok.id_to_token(tokenizer.eos_id),
                "pad_token": tok.id_to_token(tokenizer.pad_id)}
    return {key: source_config[key] for key in ("eos_token", "pad_token") if key in source_config}


def load_tokenizer(path: str | Path) -> LoadedTokenizer:
    """Load a tokenizer.json; UsageError naming the file if missing or lacking MASK/EOS."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"tokenizer {p}: no such file (expected a tokenizer.json)")
    return from_json_string(p.read_text(encoding="utf-8"), path=str(p))


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` ids (special tokens included) on ``texts``."""
    if not isinstance(vocab_size, int) or vocab_size < 256 + len(SPECIAL_TOKENS):
        raise UsageError(
            f"--vocab-size: got {vocab_size!r}, expected an integer >= {256 + len(SPECIAL_TOKENS)} "
            "(256 byte tokens plus the special tokens)"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def iter_text_files(paths: Iterable[str | Path], glob: str = "*") -> Iterator[str]:
    """Text of every file under ``paths`` (files or directory trees filtered by ``glob``).

    Files that are not UTF-8 are skipped: a tokenizer corpus tolerates a stray binary file.
    """
    for path in paths:
        p = Path(path)
        files = sorted(f for f in p.rglob(glob) if f.is_file()) if p.is_dir() else [p]
        for f in files:
            try:
                yield f.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
