"""Hugging Face ``config.json`` of a Llama-family causal LM <-> ``ModelConfig``.

Supported: ``LlamaForCausalLM`` (Llama 2/3, Seed-Coder, CodeLlama, ...), ``Qwen2ForCausalLM``
(Qwen2/2.5, Qwen2.5-Coder: QKV bias) and ``Qwen3ForCausalLM`` (dense Qwen3: a per-head RMSNorm on
queries and keys before RoPE, megatron's ``qk_layernorm``, and ``head_dim`` independent of
``hidden_size / num_attention_heads``). All are RMSNorm + SwiGLU + RoPE (``rotate_half``, the
same non-interleaved rotation megatron uses, so no permutation of q/k rows is needed) + GQA, with
tied or untied embeddings. Features our model does not have are refused with the config key that
asks for them, rather than converted into a model that computes something else: RoPE scaling
(Llama 3.1 ``llama3``, YaRN, ...), partial rotary, biases on the output/MLP projections,
sliding-window attention (``use_sliding_window``, or a ``layer_types`` entry other than
``full_attention``), activations other than SiLU; mixture-of-experts architectures
(``Qwen3MoeForCausalLM``, ``Qwen2MoeForCausalLM``) are refused by name.

The config is read as JSON (not through ``transformers``): both the transformers 5 spelling
(``rope_parameters``, ``dtype``) and the 4.x one (``rope_theta``/``rope_scaling``,
``torch_dtype``) are accepted, and the export writes both.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from megatron_diffusion.errors import UsageError
from megatron_diffusion.model.config import ModelConfig

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
                           "Qwen3ForCausalLM": "qwen3"}
"""HF architecture name -> ``model_type``."""
DEFAULT_HEAD_DIM = {"Qwen3ForCausalLM": 128}
"""``head_dim`` of a config.json that omits it, where it is not ``hidden_size / heads``."""
MOE_ARCHITECTURES = ("Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM", "MixtralForCausalLM")
"""Refused with their own reason: our MLP is dense (megatron's MoE layers are not wired in)."""


@dataclass(frozen=True)
class HFModel:
    """What conversion needs from an HF ``config.json``."""

    architecture: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    """Rows of the HF embedding (``config.vocab_size``; may exceed the tokenizer's size)."""
    rope_theta: float
    norm_epsilon: float
    qkv_bias: bool
    qk_norm: bool
    """Per-head RMSNorm of queries and keys (Qwen3's ``q_norm``/``k_norm``)."""
    tied: bool
    max_position_embeddings: int
    initializer_range: float
    eos_token_id: int | None
    raw: dict
    """The whole ``config.json``, kept so an export can reproduce fields we do not model."""


def _rope_theta(raw: dict, where: str) -> float:
    params = raw.get("rope_parameters")
    scaling = raw.get("rope_scaling")
    for name, block in (("rope_parameters", params), ("rope_scaling", scaling)):
        if block is None:
            continue
        kind = block.get("rope_type", block.get("type", "default"))
        if kind not in (None, "default"):
            raise UsageError(f"{where}: {name}.rope_type={kind!r} (RoPE scaling) is not supported; "
                             "megatron-diffusion models use plain RoPE (rope_type 'default')")
        if block.get("partial_rotary_factor", 1.0) != 1.0:
            raise UsageError(f"{where}: {name}.partial_rotary_factor is not supported")
    if raw.get("partial_rotary_factor", 1.0) != 1.0:
        raise UsageError(f"{where}: partial_rotary_factor is not supported")
    if params and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(raw.get("rope_theta", 10000.0))


def _architecture(raw: dict, where: str) -> str:
    archs = raw.get("architectures") or []
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    if len(archs) == 1 and archs[0] in MOE_ARCHITECTURES:
        raise UsageError(f"{where}: architecture {archs[0]!r} (mixture of experts) is not "
                         f"supported; supported architectures (dense): {supported}")
    if len(archs) != 1 or archs[0] not in SUPPORTED_ARCHITECTURES:
        raise UsageError(f"{where}: architecture {archs[0] if len(archs) == 1 else archs!r} is not "
                         f"supported; supported architectures: {supported}")
    return archs[0]


def _refuse_sliding_window(raw: dict, where: str) -> None:
    if raw.get("use_sliding_window", False):
        raise UsageError(f"{where}: use_sliding_window=true is not supported (full attention "
                         "in every layer only)")
    other = sorted({t for t in raw.get("layer_types") or [] if t != "full_attention"})
    if other:
        raise UsageError(f"{where}: layer_types has {other[0]!r} layers; only 'full_attention' "
                         "is supported (no sliding-window attention)")


def parse_hf_config(raw: dict, where: str = "config.json") -> HFModel:
    """Validate an HF config dict and extract the architecture; UsageError naming the key."""
    arch = _architecture(raw, where)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "vocab_size"):
        if not isinstance(raw.get(key), int) or raw[key] <= 0:
            raise UsageError(f"{where}: {key} must be a positive integer, got {raw.get(key)!r}")
    if raw.get("hidden_act", "silu") != "silu":
        raise UsageError(f"{where}: hidden_act={raw['hidden_act']!r} is not supported (SwiGLU "
                         "with 'silu' only)")
    if raw.get("mlp_bias", False):
        raise UsageError(f"{where}: mlp_bias=true is not supported (no MLP biases)")
    if arch != "Qwen2ForCausalLM" and raw.get("attention_bias", False):
        raise UsageError(f"{where}: attention_bias=true (a bias on o_proj too) is not supported; "
                         "Qwen2-style q/k/v biases are")
    _refuse_sliding_window(raw, where)
    heads = raw["num_attention_heads"]
    groups = raw.get("num_key_value_heads") or heads
    # without the key, transformers' Qwen3Config says 128 whatever the width; the others divide
    head_dim = raw.get("head_dim") or DEFAULT_HEAD_DIM.get(arch, raw["hidden_size"] // heads)
    if heads % groups:
        raise UsageError(f"{where}: num_key_value_heads={groups} does not divide "
                         f"num_attention_heads={heads}")
    eos = raw.get("eos_token_id")
    if isinstance(eos, list):  # Llama-3 instruct lists several stop ids; the first ends documents
        eos = eos[0] if eos else None
    return HFModel(
        architecture=arch, num_layers=raw["num_hidden_layers"], hidden_size=raw["hidden_size"],
        num_attention_heads=heads, num_query_groups=groups, head_dim=head_dim,
        ffn_hidden_size=raw["intermediate_size"], vocab_size=raw["vocab_size"],
        rope_theta=_rope_theta(raw, where), norm_epsilon=float(raw.get("rms_norm_eps", 1e-6)),
        qkv_bias=arch == "Qwen2ForCausalLM", qk_norm=arch == "Qwen3ForCausalLM",
        tied=bool(raw.get("tie_word_embeddings", False)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
        initializer_range=float(raw.get("initializer_range", 0.02)), eos_token_id=eos, raw=raw)


def read_hf_config(hf_dir) -> HFModel:
    path = Path(hf_dir) / "config.json"
    if not Path(hf_dir).is_dir():
        raise UsageError(f"--hf: {hf_dir} is not a directory")
    if not path.is_file():
        raise UsageError(f"--hf: {path} does not exist (expected a Hugging Face model directory)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"--hf: {path} is not valid JSON ({e})") from None
    return parse_hf_config(raw, str(path))


def model_config(hf: HFModel, *, vocab_size: int, mask_token_id: int, params_dtype: str,
                 make_vocab_size_divisible_by: int = 128) -> ModelConfig:
    """Our ``ModelConfig`` for an HF model; ``logit_shift=True`` because an AR checkpoint's
    output ``i`` predicts token ``i+1`` (docs/method.md 1)."""
    return ModelConfig(
        num_layers=hf.num_layers, hidden_size=hf.hidden_size,
        num_attention_heads=hf.num_attention_heads, num_query_groups=hf.num_query_groups,
        ffn_hidden_size=hf.ffn_hidden_size, kv_channels=hf.head_dim, vocab_size=vocab_size,
        mask_token_id=mask_token_id, make_vocab_size_divisible_by=make_vocab_size_divisible_by,
        max_position_embeddings=hf.max_position_embeddings, rotary_base=hf.rope_theta,
        norm_epsilon=hf.norm_epsilon, add_qkv_bias=hf.qkv_bias, qk_layernorm=hf.qk_norm,
        untie_embeddings_and_output_weights=not hf.tied, init_method_std=hf.initializer_range,
        logit_shift=True, params_dtype=params_dtype)


def export_config(cfg: ModelConfig, *, architecture: str, dtype: str, token_ids: dict,
                  diffusion: dict, base: dict | None = None) -> dict:
    """``config.json`` for an export. ``base`` (the original HF config of a converted model)
    keeps fields we do not model (``bos_token_id``, ...); everything we model is overwritten."""
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise UsageError(f"architecture {architecture!r} is not supported; supported "
                         f"architectures: {', '.join(SUPPORTED_ARCHITECTURES)}")
    out = dict(base or {})
    # auto_map: an export's own names its block_diffusion.py, which a new export may lack
    for stale in ("rope_scaling", "torch_dtype", "dtype", "transformers_version", "_name_or_path",
                  "auto_map"):
        out.pop(stale, None)
    head_dim = cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads
    out.update({
        "architectures": [architecture],
        "model_type": SUPPORTED_ARCHITECTURES[architecture],
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_query_groups,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.norm_epsilon,
        "rope_theta": cfg.rotary_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rotary_base},
        "tie_word_embeddings": not cfg.untie_embeddings_and_output_weights,
        "vocab_size": cfg.vocab_size,
        "initializer_range": cfg.init_method_std,
        "attention_dropout": 0.0,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
        "diffusion": diffusion,
        **token_ids,
    })
    if architecture == "LlamaForCausalLM":
        out.update({"attention_bias": False, "mlp_bias": False})
    else:
        if architecture == "Qwen3ForCausalLM":
            out["attention_bias"] = False  # Qwen3's would put biases on q/k/v and o_proj
        out.update({"use_sliding_window": False, "sliding_window": None,
                    "max_window_layers": cfg.num_layers,
                    "layer_types": ["full_attention"] * cfg.num_layers})
    return out
