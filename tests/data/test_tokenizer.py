import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from megatron_diffusion.cli import main
from megatron_diffusion.data.tokenizer import (EOS_TOKEN, load_tokenizer, tokenizer_hash,
                                               train_tokenizer)
from megatron_diffusion.errors import UsageError
from tests.data.conftest import STDLIB


def test_round_trip_and_special_ids(tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    assert len({tok.eos_id, tok.mask_id, tok.pad_id}) == 3
    assert tok.vocab_size == 600
    for text in ["def f(x):\n    return x ** 2\n", "ünïcödé ✓ 漢字\t\r\n", ""]:
        assert tok.decode(tok.encode(text)) == text


def test_special_token_strings_in_text_stay_text(tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    text = 'MASK = "[MASK]"; EOS = "<|endoftext|>"'
    ids = tok.encode(text)
    assert tok.mask_id not in ids and tok.eos_id not in ids
    assert tok.decode(ids) == text


def test_prompt_special_token_text_is_the_special_id_as_in_hf(tmp_path):
    from transformers import PreTrainedTokenizerFast

    from tests.helpers import make_tokenizer

    path = make_tokenizer(tmp_path / "chat.json", special=("<|im_start|>", "<|im_end|>"))
    tok = load_tokenizer(path)
    start, end = (tok.tokenizer.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>"))
    assert tok.encode_prompt("<|im_start|>") == [start]
    chat = "<|im_start|>user\ndef f():<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode_prompt(chat)
    assert ids.count(start) == 2 and ids.count(end) == 1 and tok.decode(ids) == chat
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in (chat, "x<|endoftext|>y", "no specials here"):
        assert tok.encode_prompt(text) == hf.encode(text, add_special_tokens=False), text
    masked = tok.encode_prompt("a [MASK] b")  # the absorbing state is never read from a prompt
    assert tok.mask_id not in masked and tok.decode(masked) == "a [MASK] b"
    assert start not in tok.encode(chat)  # corpus text (preprocess) keeps specials as text


def test_missing_mask_names_the_file(tmp_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["some text here"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOS_TOKEN], show_progress=False))
    path = tmp_path / "nomask.json"
    tok.save(str(path))
    with pytest.raises(UsageError, match=r"nomask\.json.*\[MASK\]"):
        load_tokenizer(path)
    with pytest.raises(UsageError, match="no such file"):
        load_tokenizer(tmp_path / "absent.json")


def test_hash_is_stable_and_discriminating(tokenizer_path, tmp_path):
    text = tokenizer_path.read_text()
    # re-serialised with other whitespace/key order: same hash
    assert tokenizer_hash(json.dumps(json.loads(text), indent=4)) == tokenizer_hash(text)
    other = train_tokenizer(["completely different corpus"] * 20, vocab_size=300)
    assert tokenizer_hash(other.to_str()) != tokenizer_hash(text)


def test_train_tokenizer_cli(tmp_path, capsys):
    out = tmp_path / "t.json"
    rc = main(["train-tokenizer", "--input", str(STDLIB / "json"), "--glob", "*.py",
               "--output", str(out), "--vocab-size", "400"])
    assert rc == 0 and load_tokenizer(out).vocab_size == 400
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]  # no temp file left
    rc = main(["train-tokenizer", "--input", str(tmp_path / "nope"), "--output", str(out),
               "--vocab-size", "400"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
