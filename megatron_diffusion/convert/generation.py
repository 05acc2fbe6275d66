"""Stop tokens, chat template and generation config, carried through conversion and export.

A converted checkpoint's ``meta.json`` has a top-level ``"generation"`` entry::

    {"stop_token_ids": [2, 0],        # every id that ends a generation, in order found
     "chat_template": "{% for ...",   # or None
     "generation_config": {...}}      # the HF generation_config.json, or None

``stop_token_ids`` (``join_stop_ids``) joins the model's own stop ids (HF: ``config.json`` and
``generation_config.json`` ``eos_token_id``, each an int or a list; GGUF:
``tokenizer.ggml.eos_token_id``/``eot_token_id``/``eom_token_id``) and the document EOS of our
data (``hf_tokenizer.check_document_eos``). An Instruct model needs both: it ends a turn with
``<|im_end|>`` and a document with ``<|endoftext|>``. The sampler stops on any of them; the
trainer copies the entry into the checkpoints of a run started ``--init-from`` it; ``mcore-to-hf``
writes it back as ``generation_config.json`` ``eos_token_id`` (the list), and the chat template as
``tokenizer_config.json`` ``chat_template`` plus ``chat_template.jinja``. ``config.json``
``eos_token_id``/``pad_token_id`` and ``tokenizer_config.json`` ``eos_token``/``pad_token`` of a
converted model stay the source's (``export_token_ids``), so ``AutoTokenizer`` and
``AutoConfig`` give the export what they gave the source.
"""

import json
from pathlib import Path

from megatron_diffusion.errors import UsageError

CHAT_TEMPLATE_FILE = "chat_template.jinja"


def _ids(value) -> list[int]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]


def join_stop_ids(*sources, document_eos: int) -> list[int]:
    """Distinct ids from ``sources`` (ints, lists or None), then the document EOS."""
    out: list[int] = []
    for value in (*sources, document_eos):
        for token_id in _ids(value):
            if token_id not in out:
                out.append(token_id)
    return out


def generation_entry(stop_ids: list[int], chat_template, generation_config) -> dict:
    return {"stop_token_ids": stop_ids, "chat_template": chat_template,
            "generation_config": generation_config}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"--hf: {path} is not valid JSON ({e})") from None


def hf_generation(hf_dir, raw_config: dict, tokenizer_config: dict | None,
                  document_eos: int) -> dict:
    """The ``generation`` entry of an HF directory."""
    hf_dir = Path(hf_dir)
    gen_path = hf_dir / "generation_config.json"
    gen = _read_json(gen_path) if gen_path.is_file() else None
    template = (tokenizer_config or {}).get("chat_template")
    if template is None and (hf_dir / CHAT_TEMPLATE_FILE).is_file():
        template = (hf_dir / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    stops = join_stop_ids(raw_config.get("eos_token_id"), (gen or {}).get("eos_token_id"),
                           document_eos=document_eos)
    return generation_entry(stops, template, gen)


def gguf_generation(reader, document_eos: int) -> dict:
    """The ``generation`` entry of a GGUF (its tokenizer metadata)."""
    from megatron_diffusion.convert.gguf_file import field

    stops = join_stop_ids(*(field(reader, f"tokenizer.ggml.{k}_token_id")
                             for k in ("eos", "eot", "eom")), document_eos=document_eos)
    return generation_entry(stops, field(reader, "tokenizer.chat_template"), None)


TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def export_token_ids(generation: dict | None, source_config: dict | None, *, document_eos: int,
                     pad_id: int) -> dict:
    """``bos/eos/pad_token_id`` of an export's ``config.json``.

    A converted model (``source_config``: its HF ``config.json``) keeps the source's, as they
    were (a missing key stays missing): ``eos_token_id`` is the model's own stop token, and the
    other stop ids are in ``generation_config.json`` (``export_generation``), as HF Instruct
    models have them. Our own model: the stop ids (a list where there are several), else the
    document EOS, and the pad id."""
    if source_config is not None:
        return {key: source_config[key] for key in TOKEN_ID_KEYS if key in source_config}
    stops = (generation or {}).get("stop_token_ids") or [document_eos]
    return {"eos_token_id": list(stops) if len(stops) > 1 else int(stops[0]),
            "pad_token_id": pad_id}


def export_generation(out_dir, generation: dict | None, token_ids: dict) -> str | None:
    """Write ``generation_config.json`` (and ``chat_template.jinja``); returns the template.

    The source's ``generation_config.json`` (if any) as it was, except ``eos_token_id``: every
    stop id (a list), so ``generate()`` stops on the document EOS too. ``token_ids`` (the
    export's ``config.json`` ones, ``export_token_ids``) fill in the keys it lacks."""
    out_dir = Path(out_dir)
    generation = generation or {}
    config = dict(generation.get("generation_config") or {})
    for key, value in token_ids.items():
        if value is not None:
            config.setdefault(key, value)
    stops = generation.get("stop_token_ids") or []
    if stops:
        config["eos_token_id"] = list(stops)
    (out_dir / "generation_config.json").write_text(json.dumps(config, indent=2))
    template = generation.get("chat_template")
    if template is not None:
        (out_dir / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")
    return template
