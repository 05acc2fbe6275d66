"""``sample --chat`` (sampling/chat.py) and prompt encoding: a prompt's special-token text is the
special id, and the chat template a checkpoint carries wraps each prompt as a user message."""

import json

import pytest

from megatron_diffusion.cli import main
from tests.helpers import make_checkpoint

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ("<|im_start|>", "<|im_end|>")


def _checkpoint(root, template):
    generation = {"stop_token_ids": [301, 0], "chat_template": template,
                  "generation_config": None}
    make_checkpoint(root, special_tokens=SPECIALS, meta_fields={"generation": generation})
    return root


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("chat"), TEMPLATE)


def _sample(checkpoint, out, *extra) -> int:
    return main(["sample", "--checkpoint", str(checkpoint), "--max-new-tokens", "4",
                 "--out", str(out), *extra])


def test_prompt_special_token_text_encodes_as_one_id(chat_checkpoint):
    from megatron_diffusion.loading.trained import load_sampler

    sampler = load_sampler(str(chat_checkpoint), max_new_tokens=4)
    start = sampler.tokenizer.tokenizer.token_to_id("<|im_start|>")
    assert sampler.encode(["<|im_start|>"]) == [[start]]
    assert sampler.encode(["<|im_start|>user\nhi"])[0][0] == start


def test_chat_renders_the_carried_template(chat_checkpoint, tmp_path):
    assert _sample(chat_checkpoint, tmp_path / "chat.jsonl", "--prompt", "def f():",
                   "--chat") == 0
    line = json.loads((tmp_path / "chat.jsonl").read_text())
    rendered = "<|im_start|>user\ndef f():<|im_end|>\n<|im_start|>assistant\n"
    assert line["prompt"] == "def f():" and line["chat_prompt"] == rendered
    assert _sample(chat_checkpoint, tmp_path / "plain.jsonl", "--prompt", rendered) == 0
    plain = json.loads((tmp_path / "plain.jsonl").read_text())
    assert "chat_prompt" not in plain
    assert plain["completion"] == line["completion"]  # the rendered text is what was decoded


@pytest.mark.parametrize("template,message", [
    (None, "--chat: checkpoint .* carries no chat template"),
    ("{{ raise_exception('no user turns') }}", "--chat: .*template fails: no user turns"),
])
def test_chat_without_a_usable_template_is_one_line(tmp_path, capsys, template, message):
    import re

    ckpt = _checkpoint(tmp_path / "run", template)
    out = tmp_path / "out.jsonl"
    assert _sample(ckpt, out, "--prompt", "x = 1", "--chat") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not out.exists()


def test_template_sees_the_token_names_of_the_export(chat_checkpoint):
    """A converted model's eos/pad are its source's (as the export's tokenizer_config.json has
    them), not the document EOS; our own tokenizer's are its EOS and pad."""
    from megatron_diffusion.data.tokenizer import load_tokenizer
    from megatron_diffusion.sampling.chat import special_token_names

    tok = load_tokenizer(chat_checkpoint / "tokenizer.json")
    source = {"eos_token": "<|im_end|>", "bos_token": {"content": "<|im_start|>"}}
    assert special_token_names(tok, {"converted_from": {"tokenizer_config": source}}) == \
        {"eos_token": "<|im_end|>", "bos_token": "<|im_start|>"}
    assert special_token_names(tok, {}) == {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
