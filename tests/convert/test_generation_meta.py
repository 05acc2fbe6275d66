"""Instruct checkpoints: stop tokens, chat template and generation config through hf-to-mcore
and mcore-to-hf (meta.json ``generation``), and ``--eos-token``."""

import json

import pytest

from megatron_diffusion import cli
from megatron_diffusion.convert.generation import join_stop_ids
from megatron_diffusion.convert.hf_to_mcore import convert_hf_to_mcore
from megatron_diffusion.data.tokenizer import load_tokenizer
from megatron_diffusion.training.checkpoint import latest_checkpoint, read_meta
from tests.convert.hf_fixtures import make_hf_model

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


def test_stop_token_ids_join_ints_and_lists_in_order():
    assert join_stop_ids(2, [2, 5], None, document_eos=0) == [2, 5, 0]
    assert join_stop_ids(None, None, document_eos=7) == [7]


@pytest.fixture(scope="module")
def hf_instruct(tmp_path_factory):
    """config.json eos '<|im_end|>' (2), generation_config eos [2, 1], a chat template."""
    hf = make_hf_model(tmp_path_factory.mktemp("hf") / "instruct", "llama", tied=True,
                       special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    (hf / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [2, 1], "temperature": 0.2, "do_sample": True}))
    tok_cfg = json.loads((hf / "tokenizer_config.json").read_text())
    tok_cfg["chat_template"] = TEMPLATE
    (hf / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return hf


def test_instruct_checkpoint_converts_with_all_stop_tokens(hf_instruct, tmp_path):
    convert_hf_to_mcore(hf_instruct, tmp_path / "mc", add_mask_token=True, progress=False)
    ckpt = latest_checkpoint(tmp_path / "mc")
    assert load_tokenizer(ckpt / "tokenizer.json").eos_id == 0  # documents end <|endoftext|>
    generation = read_meta(ckpt)["generation"]
    assert generation["stop_token_ids"] == [2, 1, 0]
    assert generation["chat_template"] == TEMPLATE
    assert generation["generation_config"]["temperature"] == 0.2


def test_export_writes_stop_tokens_and_chat_template_back(hf_instruct, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    from megatron_diffusion.convert.mcore_to_hf import convert_mcore_to_hf

    convert_hf_to_mcore(hf_instruct, tmp_path / "mc", add_mask_token=True, progress=False)
    out = convert_mcore_to_hf(tmp_path / "mc", tmp_path / "hf", progress=False)
    gen = GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == [2, 1, 0] and gen.temperature == 0.2
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == 2  # the source's; the other stops are generation_config's
    assert (out / "chat_template.jinja").read_text() == TEMPLATE
    tok = AutoTokenizer.from_pretrained(out)
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>hi<|im_end|>"

    back = tmp_path / "back"  # export -> import keeps the same generation entry
    convert_hf_to_mcore(out, back, progress=False)
    assert read_meta(latest_checkpoint(back))["generation"]["stop_token_ids"] == [2, 1, 0]


def test_eos_token_flag_on_hf_to_mcore(hf_instruct, tmp_path, capsys):
    args = ["convert", "hf-to-mcore", "--hf", str(hf_instruct), "--add-mask-token",
            "--no-progress"]
    assert cli.main(args + ["--out", str(tmp_path / "ok"), "--eos-token", "<|endoftext|>"]) == 0
    rc = cli.main(args + ["--out", str(tmp_path / "bad"), "--eos-token", "<|im_end|>"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "--eos-token: '<|im_end|>' (id 2) is not the token the data tools end documents " \
           "with: '<|endoftext|>' (id 0" in err
    assert not (tmp_path / "bad").exists()


def test_loading_an_hf_directory_gives_its_stop_tokens(hf_instruct, tmp_path):
    from megatron_diffusion.convert.hf_export import load_hf_export
    from megatron_diffusion.convert.mcore_to_hf import convert_mcore_to_hf

    convert_hf_to_mcore(hf_instruct, tmp_path / "mc", add_mask_token=True, progress=False)
    out = convert_mcore_to_hf(tmp_path / "mc", tmp_path / "hf", progress=False)
    assert load_hf_export(out).meta["generation"]["stop_token_ids"] == [2, 1, 0]
    (out / "megatron_diffusion.json").unlink()  # a plain HF directory whose tokenizer has [MASK]
    generation = load_hf_export(out).meta["generation"]
    assert sorted(generation["stop_token_ids"]) == [0, 1, 2]
    assert generation["chat_template"] == TEMPLATE


TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


@pytest.mark.parametrize("arch,special,config_eos,tokenizer_tokens,stops", [
    # Qwen3 Instruct: EOS '<|im_end|>' (2) in both files, pad '<|endoftext|>' in the tokenizer
    # only; documents end with '<|endoftext|>' (0)
    ("qwen3", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 2,
     {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, [2, 0]),
    # Llama 3 Instruct-like: config.json EOS '</s>' (1), tokenizer_config EOS '<|eot_id|>', no
    # pad anywhere (config.json without the key); documents end with '</s>'
    ("llama", ["<s>", "</s>", "<|eot_id|>"], 1, {"eos_token": "<|eot_id|>"}, [1]),
])
def test_round_trip_keeps_the_source_eos_and_pad(tmp_path, arch, special, config_eos,
                                                  tokenizer_tokens, stops):
    """hf-to-mcore then mcore-to-hf: config.json bos/eos/pad_token_id and tokenizer_config.json
    eos_token/pad_token are the source's (a missing one stays missing); the document EOS is a
    stop id of generation_config.json only."""
    from transformers import AutoTokenizer

    from megatron_diffusion.convert.mcore_to_hf import convert_mcore_to_hf

    hf = make_hf_model(tmp_path / "src", arch, tied=True, num_layers=1, special=special,
                       eos_token_id=config_eos)
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **tokenizer_tokens}
    (hf / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    if "pad_token" not in tokenizer_tokens:
        raw = json.loads((hf / "config.json").read_text())
        raw.pop("pad_token_id", None)
        (hf / "config.json").write_text(json.dumps(raw))
    convert_hf_to_mcore(hf, tmp_path / "mc", add_mask_token=True, progress=False)
    out = convert_mcore_to_hf(tmp_path / "mc", tmp_path / "export", progress=False)

    def read(directory, name, keys):
        found = json.loads((directory / name).read_text())
        return {key: found[key] for key in keys if key in found}

    assert read(out, "config.json", TOKEN_ID_KEYS) == read(hf, "config.json", TOKEN_ID_KEYS)
    assert read(out, "config.json", TOKEN_ID_KEYS)["eos_token_id"] == config_eos
    keys = ("eos_token", "pad_token")
    assert read(out, "tokenizer_config.json", keys) == tokenizer_tokens
    theirs, ours = AutoTokenizer.from_pretrained(hf), AutoTokenizer.from_pretrained(out)
    assert (ours.eos_token, ours.eos_token_id, ours.pad_token, ours.pad_token_id) == \
        (theirs.eos_token, theirs.eos_token_id, theirs.pad_token, theirs.pad_token_id)
    assert ours.mask_token == "[MASK]"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == stops
