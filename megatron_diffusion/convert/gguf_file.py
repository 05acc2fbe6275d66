"""A GGUF file (llama.cpp's format) seen as an HF checkpoint: a ``config.json`` and named tensors.

``gguf-to-mcore`` reuses the whole HF import (``hf_to_mcore``): this module only translates. The
``{arch}.*`` metadata becomes the HF config keys they stand for (validated by
``hf_config.parse_hf_config``; GGUF features we do not model are refused by their GGUF key).
``GGUFTensors`` serves each tensor under its HF name, dequantised to float32 by the ``gguf``
package when read (GGUF lists dimensions innermost first). llama.cpp permutes the rows of every
Llama ``q_proj``/``k_proj`` into the interleaved RoPE layout; ``unpermute_rope_rows`` undoes it
(Qwen2/Qwen3 are stored unpermuted). docs/convert.md "gguf-to-mcore" has the key table and the
permutation.
"""

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megatron_diffusion.errors import UsageError

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM"}
"""``general.architecture`` -> the HF architecture it is converted as."""
MOE_ARCHITECTURES = ("qwen2moe", "qwen3moe")
"""Refused with their own reason (mixture of experts: our MLP is dense)."""
PERMUTED_ARCHITECTURES = ("llama",)
"""Architectures whose q/k rows llama.cpp permutes for its interleaved RoPE."""
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")
"""Tensor types dequantised on import (``gguf.quants.dequantize``); others are refused."""

ROWS_PER_READ = 4096
"""Rows dequantised at once (the embedding: 4096 of its 49152 rows)."""
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {"token_embd.weight": "model.embed_tokens.weight",
                   "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def hf_tensor_name(gguf_name: str) -> str | None:
    """The HF name of a GGUF tensor, or None for a tensor an HF Llama/Qwen2/Qwen3 does not
    have."""
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}"
    return None


def unpermute_rope_rows(w, n_head: int):
    """Inverse of llama.cpp's ``LlamaModel.permute`` on a q/k weight ``[n_head*d, h]`` (a numpy
    array or a torch tensor; a new one is returned)."""
    d_half = w.shape[0] // n_head // 2
    return w.reshape(n_head, d_half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def open_gguf(path) -> "gguf.GGUFReader":  # noqa: F821
    """``gguf.GGUFReader`` of ``path``; one-line UsageError for a missing/corrupt/truncated file."""
    try:
        import gguf
    except ImportError:
        raise UsageError("--gguf: reading GGUF files needs the gguf package: "
                         "pip install 'megatron-diffusion[gguf]'") from None

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--gguf: {path} does not exist")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/IndexError/struct errors on bad bytes
        detail = str(e).splitlines()[0] if str(e) else ""
        raise UsageError(f"--gguf: {path} is not a readable GGUF file (truncated or corrupt: "
                         f"{type(e).__name__} {detail})") from None
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise UsageError(f"--gguf: {path} is truncated: tensor {t.name!r} ends at byte "
                             f"{t.data_offset + t.n_bytes}, the file has {size}")
    return reader


def field(reader, key: str, default=None, *, required: bool = False):
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise UsageError(f"--gguf: metadata key {key!r} is missing")
        return default
    return f.contents()


def architecture(reader) -> str:
    arch = field(reader, "general.architecture", required=True)
    if arch in MOE_ARCHITECTURES:
        raise UsageError(f"--gguf: architecture {arch!r} (mixture of experts) is not supported; "
                         f"supported (dense): {', '.join(ARCHITECTURES)}")
    if arch not in ARCHITECTURES:
        raise UsageError(f"--gguf: architecture {arch!r} is not supported; supported: "
                         f"{', '.join(ARCHITECTURES)}")
    return arch


def check_tensor_types(reader) -> Counter:
    """Counts of tensor types; UsageError naming the first unsupported type and tensor."""
    for t in reader.tensors:
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise UsageError(f"--gguf: tensor {t.name!r} has type {t.tensor_type.name}, which is "
                             f"not supported; supported types: {', '.join(SUPPORTED_TYPES)}")
    return Counter(t.tensor_type.name for t in reader.tensors)


def _int_key(reader, key: str, default=None) -> int | None:
    value = field(reader, key, default, required=default is None)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"--gguf: metadata {key}={value!r}, expected one integer")
    return value


def _refuse_features(reader, arch: str, head_dim: int) -> None:
    scaling = field(reader, f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise UsageError(f"--gguf: {arch}.rope.scaling.type={scaling!r} (RoPE scaling) is not "
                         "supported; megatron-diffusion models use plain RoPE")
    rope_dims = field(reader, f"{arch}.rope.dimension_count", head_dim)
    if rope_dims != head_dim:
        raise UsageError(f"--gguf: {arch}.rope.dimension_count={rope_dims} is not the head "
                         f"width {head_dim} (partial rotary is not supported)")
    if field(reader, f"{arch}.expert_count", 0):
        raise UsageError(f"--gguf: {arch}.expert_count is set (mixture of experts is not "
                         "supported)")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise UsageError("--gguf: tensor 'rope_freqs.weight' (Llama 3.1 RoPE scaling) is not "
                         "supported; megatron-diffusion models use plain RoPE")


def hf_config(reader, path) -> dict:
    """The HF ``config.json`` this GGUF's metadata describes (validated by ``parse_hf_config``)."""
    arch = architecture(reader)
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise UsageError(f"--gguf: {path} has no tensor 'token_embd.weight'")
    hidden = _int_key(reader, f"{arch}.embedding_length")
    heads = _int_key(reader, f"{arch}.attention.head_count")
    head_dim = _int_key(reader, f"{arch}.attention.key_length", hidden // heads)
    _refuse_features(reader, arch, head_dim)
    raw = {
        "architectures": [ARCHITECTURES[arch]], "model_type": arch,
        "hidden_size": hidden, "num_hidden_layers": _int_key(reader, f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": _int_key(reader, f"{arch}.attention.head_count_kv", heads),
        "head_dim": head_dim,
        "intermediate_size": _int_key(reader, f"{arch}.feed_forward_length"),
        "vocab_size": int(embd.shape[1]), "hidden_act": "silu",
        "rope_theta": float(field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "rms_norm_eps": float(field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "max_position_embeddings": _int_key(reader, f"{arch}.context_length", 4096),
        "tie_word_embeddings": all(t.name != "output.weight" for t in reader.tensors),
    }
    for name in ("bos", "eos"):
        token_id = field(reader, f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            raw[f"{name}_token_id"] = int(token_id)
    return raw


@dataclass(frozen=True)
class GGUFEntry:
    """What ``hf_to_mcore`` reads of a tensor entry (as of a safetensors entry)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path
    tensor: object
    """The ``gguf.ReaderTensor``."""


class GGUFTensors:
    """HF tensor name -> dequantised tensor, read from the GGUF on demand (the reader interface
    of ``safetensors_io.SafetensorsCheckpoint`` that ``hf_to_mcore`` uses)."""

    def __init__(self, reader, path, *, num_attention_heads: int, num_query_groups: int):
        self.path = Path(path)
        self.arch = architecture(reader)
        self.heads = {"q_proj": num_attention_heads, "k_proj": num_query_groups}
        self.entries: dict[str, GGUFEntry] = {}
        for t in reader.tensors:
            name = hf_tensor_name(t.name)
            if name is None:
                raise UsageError(f"--gguf: unexpected tensor {t.name!r} in {self.path.name}: "
                                 f"not part of a {ARCHITECTURES[self.arch]}")
            shape = tuple(int(n) for n in reversed(t.shape.tolist()))
            dtype = torch.bfloat16 if t.tensor_type.name == "BF16" else torch.float32
            self.entries[name] = GGUFEntry(shape, dtype, self.path, t)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def keys(self):
        return self.entries.keys()

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor (into ``out`` if given), dequantised ``ROWS_PER_READ`` rows at a time so
        the dequantisation temporaries stay small next to a large embedding."""
        entry = self.entries[name]
        result = torch.empty(entry.shape, dtype=entry.dtype) if out is None else out
        rows = entry.shape[0] if len(entry.shape) > 1 else 1
        for first in range(0, rows, ROWS_PER_READ):
            last = min(first + ROWS_PER_READ, rows)
            part = _dequantize(entry.tensor, first, last)
            target = result[first:last] if len(entry.shape) > 1 else result
            target.copy_(torch.from_numpy(part.reshape(target.shape)))
        leaf = name.rsplit(".", 2)[-2]
        if self.arch in PERMUTED_ARCHITECTURES and leaf in self.heads and name.endswith("weight"):
            result.copy_(unpermute_rope_rows(result, self.heads[leaf]))
        return result


def _dequantize(t, first: int, last: int) -> np.ndarray:
    """float32 values of rows ``first:last`` of a 2-D tensor (all of a 1-D one)."""
    from gguf.quants import dequantize

    raw = t.data[first:last] if t.data.ndim > 1 else t.data
    return np.asarray(dequantize(raw, t.tensor_type), dtype=np.float32)
