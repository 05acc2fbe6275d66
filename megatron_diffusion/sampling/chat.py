"""The chat template a converted checkpoint carries, applied to prompts (``sample --chat``).

``convert hf-to-mcore``/``gguf-to-mcore`` keep the source model's chat template in ``meta.json``
``generation.chat_template`` (docs/convert.md). An Instruct model expects its prompt wrapped in
it: ``render_chat`` makes each prompt one user message and renders the template with
``add_generation_prompt``, through transformers' own ``apply_chat_template`` (the same Jinja
environment and special-token names as HF users get from the export's tokenizer), so the text is
what ``AutoTokenizer.apply_chat_template(..., tokenize=False)`` gives. The sampler then encodes
the template's special-token text as the special ids (``LoadedTokenizer.encode_prompt``).
"""

from megatron_diffusion.data.tokenizer import hf_special_token_names
from megatron_diffusion.errors import UsageError


def chat_template(meta: dict, where: str) -> str:
    """The checkpoint's template; UsageError naming ``--chat`` and ``where`` if it has none."""
    template = (meta.get("generation") or {}).get("chat_template")
    if not isinstance(template, str) or not template.strip():
        raise UsageError(f"--chat: {where} carries no chat template (meta.json "
                         "generation.chat_template; written by `convert hf-to-mcore`/"
                         "`gguf-to-mcore` from a model that has one)")
    return template


def special_token_names(tokenizer, meta: dict) -> dict[str, str]:
    """``bos_token``, ``eos_token``, ... as the template sees them: those of the export's
    ``tokenizer_config.json`` (a converted model's are its source's,
    ``data.tokenizer.hf_special_token_names``; our own tokenizer names its EOS and pad)."""
    source = (meta.get("converted_from") or {}).get("tokenizer_config")
    found = hf_special_token_names(tokenizer, source)
    found.update({key: (source or {}).get(key) for key in ("bos_token", "unk_token")})
    names = {}
    for key, value in found.items():
        value = value.get("content") if isinstance(value, dict) else value  # an AddedToken dict
        if isinstance(value, str):
            names[key] = value
    return names


def render_chat(prompts: list[str], template: str, tokenizer, meta: dict) -> list[str]:
    """Each prompt as one user message, rendered with ``add_generation_prompt=True``."""
    return render_messages([[{"role": "user", "content": p}] for p in prompts], template,
                           tokenizer, meta)


def render_messages(conversations: list[list[dict]], template: str, tokenizer, meta: dict,
                    add_generation_prompt: bool = True, option: str = "--chat") -> list[str]:
    """Each conversation (``[{"role", "content"}, ...]``, e.g. lm-eval's few-shot turns)
    rendered with the template; a failing template is a UsageError naming ``option``."""
    import jinja2
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer.tokenizer.to_str()),
                                 **special_token_names(tokenizer, meta))
    try:
        return [hf.apply_chat_template(messages, chat_template=template, tokenize=False,
                                       add_generation_prompt=add_generation_prompt)
                for messages in conversations]
    except jinja2.TemplateError as e:
        raise UsageError(f"{option}: the checkpoint's chat template fails: {e}") from None
