"""Tiny GGUF files written locally with ``gguf.GGUFWriter`` from a tiny HF model, as llama.cpp's
``convert_hf_to_gguf.py`` would write them (q/k rows permuted for Llama, tensors quantised with
``gguf.quants.quantize``), plus broken variants for the bad-input tests."""

import json
from pathlib import Path

import numpy as np
import torch

from tests.convert.hf_fixtures import hf_state

HF_TO_GGUF = {"input_layernorm.weight": "attn_norm.weight",
              "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
              "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
              "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
              "self_attn.q_norm.weight": "attn_q_norm.weight",
              "self_attn.k_norm.weight": "attn_k_norm.weight",
              "self_attn.o_proj.weight": "attn_output.weight",
              "post_attention_layernorm.weight": "ffn_norm.weight",
              "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
              "mlp.down_proj.weight": "ffn_down.weight"}
GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
          "lm_head.weight": "output.weight"}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp ``LlamaModel.permute`` (HF rotate-half rows -> GGML interleaved rows)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_name(hf_name: str) -> str:
    if hf_name in GLOBAL:
        return GLOBAL[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{HF_TO_GGUF[rest]}"


def _tokenizer_metadata(w, hf_dir: Path, eos: str, merges: bool) -> None:
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in tok["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    if merges:
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_eos_token_id(tokens.index(eos))
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")


K_QUANT_LAYOUT = {"Q4_K": (144, (0, 2)), "Q6_K": (210, (208,))}
"""Bytes per 256-value block, and the offsets of its float16 scales (``d``, ``dmin``)."""


def random_k_quant(rows: int, cols: int, kind: str, seed: int) -> np.ndarray:
    """Random ``kind`` blocks for a ``[rows, cols]`` tensor, their float16 scales set to small
    finite values (gguf-py can dequantise K-quants but not produce them)."""
    size, scale_offsets = K_QUANT_LAYOUT[kind]
    blocks = np.random.default_rng(seed).integers(0, 256, (rows, cols // 256, size), np.uint8)
    for offset in scale_offsets:
        blocks[..., offset:offset + 2] = np.frombuffer(np.float16(0.0002).tobytes(), np.uint8)
    return blocks.reshape(rows, -1)


def write_gguf(hf_dir: Path, path: Path, *, arch: str = "llama", qtype: str = "F32",
               eos: str = "<|im_end|>", merges: bool = True, override_type: dict | None = None):
    """Write ``hf_dir`` (a ``make_hf_model`` directory) as a GGUF of ``arch`` (llama, qwen2,
    qwen3: only llama's q/k rows are permuted, as llama.cpp does). ``qtype``: the type of the 2-D
    weights (norms stay F32, as llama.cpp keeps them; Q4_K/Q6_K: random blocks, not the HF
    weights); ``override_type``: GGUF tensor name -> (type name, raw bytes) to plant a tensor
    of another type."""
    import gguf

    cfg = json.loads((hf_dir / "config.json").read_text())
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    w.add_key_length(head_dim)  # as convert_hf_to_gguf.py writes a config's head_dim
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    _tokenizer_metadata(w, hf_dir, eos, merges)
    heads = {"q_proj": cfg["num_attention_heads"], "k_proj": cfg["num_key_value_heads"]}
    for name, tensor in hf_state(hf_dir).items():
        if cfg["tie_word_embeddings"] and name == "lm_head.weight":
            continue
        data = tensor.float().numpy()
        leaf = name.rsplit(".", 2)[-2]
        if arch == "llama" and leaf in heads:
            data = llama_cpp_permute(data, heads[leaf])
        target = gguf_name(name)
        if override_type and target in override_type:
            kind, raw = override_type[target]
            w.add_tensor(target, raw, raw_dtype=gguf.GGMLQuantizationType[kind])
        elif data.ndim == 2 and qtype in K_QUANT_LAYOUT:  # random weights of that type
            raw = random_k_quant(*data.shape, qtype, seed=len(target) + data.shape[0])
            w.add_tensor(target, raw, raw_dtype=gguf.GGMLQuantizationType[qtype])
        elif data.ndim == 2 and qtype != "F32":
            kind = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(target, gguf.quants.quantize(data, kind), raw_dtype=kind)
        else:
            w.add_tensor(target, np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def dequantised_source(hf_dir: Path, qtype: str) -> dict[str, torch.Tensor]:
    """The HF weights as a GGUF of ``qtype`` stores them (quantise, dequantise), unpermuted."""
    import gguf

    out = {}
    kind = gguf.GGMLQuantizationType[qtype]
    for name, tensor in hf_state(hf_dir).items():
        data = tensor.float().numpy()
        if data.ndim == 2 and qtype != "F32":
            data = gguf.quants.dequantize(gguf.quants.quantize(data, kind), kind)
        out[name] = torch.from_numpy(np.asarray(data, dtype=np.float32).reshape(tensor.shape))
    return out
