"""``--init-from``: the architecture comes from the checkpoint, not from the run's defaults.

A converted (or trained) checkpoint carries its model config in ``meta.json["config"]["model"]``.
CPT from it must run the same architecture: a config that omits ``rotary_base`` would otherwise
train SmolLM2's weights (RoPE base 1e5, RMSNorm eps 1e-5) with the defaults 1e4 and 1e-6, and
nothing would complain. So every architecture field the run config does not set (YAML or
override) is taken from the checkpoint; one it sets to a different value is refused by name.
The vocabulary (``vocab_size``, ``mask_token_id``) comes from the data store and is checked
against the checkpoint's shapes afterwards; training choices (``logit_shift``, dtype, backend)
stay the run's own.

One exception: a model may have more vocabulary rows than its tokenizer has tokens (Qwen2/Qwen3
pad their embedding: Qwen3 151936 rows for 151669 tokens; conversion puts ``[MASK]`` in the
first spare row). Those rows are part of the model and the tokenizer never emits them, so
``adopt_spare_rows`` gives the run the checkpoint's larger ``vocab_size`` where the store's
(the tokenizer's size) is smaller and the config names none; that the store was tokenized with
the checkpoint's own tokenizer is checked by hash (``data.vocab.check_checkpoint_store``).
"""

import math

from megatron_diffusion.errors import UsageError

ARCHITECTURE_KEYS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                     "ffn_hidden_size", "kv_channels", "make_vocab_size_divisible_by",
                     "max_position_embeddings", "rotary_base", "norm_epsilon", "add_qkv_bias",
                     "qk_layernorm", "untie_embeddings_and_output_weights")


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):  # eps stored as float32: 9.99999975e-06
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6)
    return a == b


def adopt_model_config(cfg, meta: dict, path) -> dict:
    """Set ``cfg.model``'s unset architecture fields from ``meta``; returns what changed."""
    theirs = (meta.get("config") or {}).get("model")
    if not isinstance(theirs, dict):
        raise UsageError(f"--init-from: checkpoint {path} has no model config in meta.json")
    adopted = {}
    for key in ARCHITECTURE_KEYS:
        if key not in theirs:
            continue
        mine = getattr(cfg.model, key)
        if _same(mine, theirs[key]):
            continue
        if cfg.is_explicit(f"model.{key}"):
            raise UsageError(f"--init-from: checkpoint {path} has model.{key}={theirs[key]!r}, "
                             f"this run has {mine!r} (drop it from the config to take the "
                             "checkpoint's)")
        setattr(cfg.model, key, theirs[key])
        adopted[key] = theirs[key]
    return adopted


def adopt_spare_rows(cfg, meta: dict, store) -> None:
    """Widen ``cfg.model.vocab_size`` (filled from ``store``) to the checkpoint's, if larger."""
    rows = ((meta.get("config") or {}).get("model") or {}).get("vocab_size")
    if (isinstance(rows, int) and rows > store.vocab_size
            and cfg.model.vocab_size == store.vocab_size
            and not cfg.is_explicit("model.vocab_size")):
        cfg.model.vocab_size = rows
