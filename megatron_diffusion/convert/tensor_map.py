"""HF tensor names <-> megatron's *full* state dict (``model/weights.py``), per tensor.

The name table and the fused layouts are in docs/convert.md "Tensor mapping": QKV fused per query
group (``[q_g0 .. q_g(r-1), k_g, v_g]`` for each key/value group, so TP splits whole groups;
Qwen2's biases the same way), SwiGLU ``linear_fc1 = [gate; up]``, Qwen3's q/k norms copied as
they are (their head width ``d`` need not be ``h / nq``), vocabulary rows past the HF embedding
initialised on import (``new_row_init``) and megatron's padding rows dropped on export.

Shapes: ``h`` hidden, ``nq`` query heads, ``ng`` key/value groups, ``r = nq/ng``, ``d`` head
width, ``f`` SwiGLU width, ``V`` real vocabulary, ``P`` padded vocabulary. Everything here is
plain torch on whole tensors, so it is unit-tested without megatron.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron_diffusion.model.config import ModelConfig


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_query_groups: int) -> torch.Tensor:
    """HF q/k/v (weights ``[n*d, h]`` or biases ``[n*d]``) -> megatron's grouped fused QKV."""
    ng = num_query_groups
    tail = q.shape[1:]
    parts = [t.reshape(ng, -1, *tail) for t in (q, k, v)]
    return torch.cat(parts, dim=1).reshape(-1, *tail)


def split_qkv(qkv: torch.Tensor, num_attention_heads: int, num_query_groups: int,
              head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of ``fuse_qkv``: contiguous HF q, k, v."""
    ng, r, d = num_query_groups, num_attention_heads // num_query_groups, head_dim
    tail = qkv.shape[1:]
    grouped = qkv.reshape(ng, (r + 2) * d, *tail)
    q, k, v = grouped.split([r * d, d, d], dim=1)
    return tuple(t.reshape(-1, *tail).contiguous() for t in (q, k, v))


def new_row_init(rows_Vh: torch.Tensor, num_new: int) -> torch.Tensor:
    """Initial value of vocabulary rows added by conversion (``[MASK]``): the mean of the
    existing rows, computed in float32. Deterministic; it keeps the new input embedding at the
    scale and direction of an average token, so the first CPT steps see in-distribution
    activations (HF ``resize_token_embeddings`` also starts from the mean)."""
    mean_h = rows_Vh.float().mean(dim=0)
    return mean_h.expand(num_new, -1).to(rows_Vh.dtype)


@dataclass(frozen=True)
class Rule:
    """One megatron tensor and the HF tensors it is made of."""

    megatron: str
    hf: tuple[str, ...]
    kind: str
    """'copy', 'qkv', 'glu' or 'vocab'."""


@dataclass(frozen=True)
class TensorLayout:
    """The shapes of one model, enough to map every tensor both ways."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    ffn_hidden_size: int
    hf_vocab_size: int
    """Rows of the HF embedding."""
    vocab_size: int
    """Our real vocabulary (``>= hf_vocab_size``: added rows are new tokens)."""
    padded_vocab_size: int
    qkv_bias: bool
    qk_norm: bool
    tied: bool

    @classmethod
    def for_model(cls, cfg: ModelConfig, *, hf_vocab_size: int, padded_vocab_size: int):
        return cls(num_layers=cfg.num_layers, hidden_size=cfg.hidden_size,
                   num_attention_heads=cfg.num_attention_heads,
                   num_query_groups=cfg.num_query_groups,
                   head_dim=cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads,
                   ffn_hidden_size=cfg.ffn_hidden_size, hf_vocab_size=hf_vocab_size,
                   vocab_size=cfg.vocab_size, padded_vocab_size=padded_vocab_size,
                   qkv_bias=cfg.add_qkv_bias, qk_norm=cfg.qk_layernorm,
                   tied=not cfg.untie_embeddings_and_output_weights)

    def rules(self) -> list[Rule]:
        """In HF file order (embedding, layers, final norm, head)."""
        out = [Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab")]
        for i in range(self.num_layers):
            hf, mc = f"model.layers.{i}.", f"decoder.layers.{i}."
            att = hf + "self_attn."
            out += [
                Rule(mc + "input_layernorm.weight", (hf + "input_layernorm.weight",), "copy"),
                Rule(mc + "self_attention.linear_qkv.weight",
                     tuple(f"{att}{p}_proj.weight" for p in "qkv"), "qkv"),
            ]
            if self.qkv_bias:
                out.append(Rule(mc + "self_attention.linear_qkv.bias",
                                tuple(f"{att}{p}_proj.bias" for p in "qkv"), "qkv"))
            if self.qk_norm:
                out += [Rule(f"{mc}self_attention.{p}_layernorm.weight", (f"{att}{p}_norm.weight",),
                             "copy") for p in "qk"]
            out += [
                Rule(mc + "self_attention.linear_proj.weight", (att + "o_proj.weight",), "copy"),
                Rule(mc + "pre_mlp_layernorm.weight", (hf + "post_attention_layernorm.weight",),
                     "copy"),
                Rule(mc + "mlp.linear_fc1.weight",
                     (hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"), "glu"),
                Rule(mc + "mlp.linear_fc2.weight", (hf + "mlp.down_proj.weight",), "copy"),
            ]
        out.append(Rule("decoder.final_layernorm.weight", ("model.norm.weight",), "copy"))
        if not self.tied:
            out.append(Rule("output_layer.weight", ("lm_head.weight",), "vocab"))
        return out

    def hf_shapes(self, exported: bool = False) -> dict[str, tuple[int, ...]]:
        """HF tensor name -> shape; ``exported``: vocabulary rows of our model (incl. added
        tokens), else of the HF source."""
        h, d, f = self.hidden_size, self.head_dim, self.ffn_hidden_size
        nq, ng = self.num_attention_heads, self.num_query_groups
        vocab = self.vocab_size if exported else self.hf_vocab_size
        shapes = {}
        for rule in self.rules():
            for name in rule.hf:
                leaf = name.rsplit(".", 2)[-2]
                bias = name.endswith(".bias")
                shape = {
                    "embed_tokens": (vocab, h), "lm_head": (vocab, h),
                    "q_proj": (nq * d, h), "k_proj": (ng * d, h), "v_proj": (ng * d, h),
                    "o_proj": (h, nq * d), "gate_proj": (f, h), "up_proj": (f, h),
                    "down_proj": (h, f), "q_norm": (d,), "k_norm": (d,),
                }.get(leaf, (h,))
                shapes[name] = shape[:1] if bias else shape
        return shapes

    def to_megatron(self, rule: Rule, hf_tensors: list[torch.Tensor]) -> torch.Tensor:
        """The full megatron tensor of ``rule`` from its HF tensors (in ``rule.hf`` order)."""
        if rule.kind == "copy":
            return hf_tensors[0]
        if rule.kind == "qkv":
            return fuse_qkv(*hf_tensors, self.num_query_groups)
        if rule.kind == "glu":
            return torch.cat(hf_tensors, dim=0)
        out_Ph = self.empty_vocab(hf_tensors[0].dtype)
        out_Ph[: self.hf_vocab_size] = hf_tensors[0]
        return self.init_added_rows(out_Ph)

    def empty_vocab(self, dtype: torch.dtype) -> torch.Tensor:
        """Zeros ``[P, h]``: the HF rows go into ``[:hf_vocab_size]``."""
        return torch.zeros(self.padded_vocab_size, self.hidden_size, dtype=dtype)

    def init_added_rows(self, out_Ph: torch.Tensor) -> torch.Tensor:
        """Fill rows ``hf_vocab_size..vocab_size-1`` (added tokens) in place; returns out."""
        if self.vocab_size > self.hf_vocab_size:
            out_Ph[self.hf_vocab_size: self.vocab_size] = new_row_init(
                out_Ph[: self.hf_vocab_size], self.vocab_size - self.hf_vocab_size)
        return out_Ph

    def to_hf(self, rule: Rule, full: torch.Tensor) -> list[torch.Tensor]:
        """The HF tensors of ``rule`` (in ``rule.hf`` order) from the full megatron tensor."""
        if rule.kind == "copy":
            return [full]
        if rule.kind == "qkv":
            return list(split_qkv(full, self.num_attention_heads, self.num_query_groups,
                                  self.head_dim))
        if rule.kind == "glu":
            return [t.contiguous() for t in full.chunk(2, dim=0)]
        return [full[: self.vocab_size]]


def hf_producers(layout: TensorLayout, get_full: Callable[[str], torch.Tensor]
                 ) -> dict[str, Callable[[], torch.Tensor]]:
    """HF name -> a function computing that tensor from the megatron tensors (``get_full``), so
    an export materialises one HF tensor at a time."""
    out = {}
    for rule in layout.rules():
        for index, name in enumerate(rule.hf):
            out[name] = (lambda rule=rule, index=index:
                         layout.to_hf(rule, get_full(rule.megatron))[index])
    return out
