"""[MASK] addition and end-of-document detection for foreign (HF) tokenizers."""

import json

import pytest
from tokenizers import AddedToken

from megatron_diffusion.convert.hf_tokenizer import (
    export_tokenizer_files,
    prepare_tokenizer,
)
from megatron_diffusion.data.tokenizer import find_eos_id, from_json_string
from megatron_diffusion.errors import UsageError
from tests.convert.hf_fixtures import make_hf_tokenizer


@pytest.mark.parametrize("special,eos", [
    (["<s>", "</s>"], "</s>"),
    (["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], "<|end_of_text|>"),
    (["<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"],
     "<\uff5cend\u2581of\u2581sentence\uff5c>"),
    (["<|endoftext|>", "<|im_end|>"], "<|endoftext|>"),
])
def test_end_of_document_token_of_common_families(tmp_path, special, eos):
    tok = make_hf_tokenizer(tmp_path / "t.json", 280, special)
    assert find_eos_id(tok) == tok.token_to_id(eos)


def test_no_end_of_document_token(tmp_path):
    tok = make_hf_tokenizer(tmp_path / "t.json", 280, ["<s>", "<|eot_id|>"])
    assert find_eos_id(tok) is None
    tok.add_special_tokens([AddedToken("[MASK]", special=True)])
    with pytest.raises(UsageError, match="lacks the eos token"):
        from_json_string(tok.to_str())


def _hf_dir(tmp_path, special, vocab=280):
    make_hf_tokenizer(tmp_path / "tokenizer.json", vocab, special)
    return tmp_path


def test_mask_added_at_the_next_id_and_special(tmp_path):
    hf = _hf_dir(tmp_path, ["<s>", "</s>"])
    prepared = prepare_tokenizer(hf, add_mask_token=True, hf_vocab_size=280)
    assert prepared.added_mask_token
    loaded = prepared.loaded
    assert (loaded.mask_id, loaded.eos_id, loaded.pad_id, loaded.vocab_size) == (280, 1, 1, 281)
    assert loaded.encode("x = [MASK]").count(280) == 0  # text never becomes the mask id

    spare = prepare_tokenizer(hf, add_mask_token=True, hf_vocab_size=300)
    assert spare.loaded.mask_id == 280  # first spare row, no growth


def test_eos_token_names_the_document_eos_or_is_refused(tmp_path):
    hf = _hf_dir(tmp_path, ["<s>", "</s>", "<|eot_id|>"])
    ok = prepare_tokenizer(hf, add_mask_token=True, hf_vocab_size=280, eos_token="</s>")
    assert ok.loaded.eos_id == 1
    with pytest.raises(UsageError, match="--eos-token: '<\\|eot_id\\|>' \\(id 2\\) is not the "
                                         "token the data tools end documents with: '</s>'"):
        prepare_tokenizer(hf, add_mask_token=True, hf_vocab_size=280, eos_token="<|eot_id|>")
    with pytest.raises(UsageError, match="--eos-token: '<nope>' is not a token of"):
        prepare_tokenizer(hf, add_mask_token=True, hf_vocab_size=280, eos_token="<nope>")


def test_no_document_eos_is_named_before_anything_is_written(tmp_path):
    hf = _hf_dir(tmp_path, ["<s>", "<|eot_id|>"])
    with pytest.raises(UsageError, match="has no end-of-document token the data tools recognise"):
        prepare_tokenizer(hf, add_mask_token=True, hf_vocab_size=280)


def test_tokenizer_larger_than_the_embedding(tmp_path):
    hf = _hf_dir(tmp_path, ["<s>", "</s>"])
    with pytest.raises(UsageError, match="280 tokens but the model's embedding only 200 rows"):
        prepare_tokenizer(hf, add_mask_token=True, hf_vocab_size=200)


@pytest.mark.parametrize("source,eos,pad", [
    (None, "</s>", "</s>"),  # our own tokenizer: the document EOS, which also pads
    ({"bos_token": "<s>", "eos_token": "<|eot_id|>"}, "<|eot_id|>", None),  # the source's, as is
])
def test_export_tokenizer_config_names_the_special_tokens(tmp_path, source, eos, pad):
    (tmp_path / "hf").mkdir()
    hf = _hf_dir(tmp_path / "hf", ["<s>", "</s>", "<|eot_id|>"])
    prepared = prepare_tokenizer(hf, add_mask_token=True, hf_vocab_size=280)
    (tmp_path / "tok.json").write_text(prepared.json)
    out = tmp_path / "out"
    out.mkdir()
    export_tokenizer_files(out, tmp_path / "tok.json", max_length=128, source_config=source,
                           chat_template="{{x}}")
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert (config["eos_token"], config["mask_token"]) == (eos, "[MASK]")
    assert config.get("pad_token") == pad and config["chat_template"] == "{{x}}"
    assert config.get("bos_token") == (source or {}).get("bos_token")
