"""``ModelConfig``: the Llama-family architecture and its numerics.

Llama/Seed-Coder/Qwen2/Qwen3 checkpoints convert onto it: RMSNorm, SwiGLU, RoPE, GQA, optional QKV
bias (Qwen2), optional per-head q/k RMSNorm (Qwen3), a head width other than
``hidden_size / num_attention_heads`` (Qwen3), tied or untied embeddings. The vocabulary holds a
``[MASK]`` token that the model never predicts (its logit is ``-inf``, docs/method.md 1); the
vocabulary is padded to a multiple of ``make_vocab_size_divisible_by * tensor_model_parallel_size``
as megatron does, and the padded entries are ``-inf`` too.
"""

from dataclasses import dataclass
from typing import Self

from megatron_diffusion.errors import UsageError, check_choice, check_int
from megatron_diffusion.model.backends import require_transformer_engine

TRANSFORMER_IMPLS = ("local", "transformer_engine")
ATTENTION_BACKENDS = ("sdpa", "flex", "te")
FP8_RECIPES = (None, "delayed", "tensorwise")
PARAMS_DTYPES = ("float32", "bfloat16")


@dataclass
class ModelConfig:
    """The transformer's architecture (megatron-core's names), the ``[MASK]`` token, the logit
    shift, and what runs it (local or Transformer Engine layers, attention backend, dtype)."""

    num_layers: int = 4
    """Transformer layers."""
    hidden_size: int = 128
    """Model width."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: int | None = None
    """Key/value heads (GQA); None = num_attention_heads (MHA)."""
    ffn_hidden_size: int | None = None
    """SwiGLU inner width; None = the Llama rule (8/3 * hidden, rounded up to a multiple of 64)."""
    kv_channels: int | None = None
    """Per-head width; None = hidden_size / num_attention_heads."""
    vocab_size: int = 0
    """Tokenizer vocabulary size incl. special tokens ([MASK], EOS); taken from the data store."""
    mask_token_id: int = -1
    """Id of [MASK]; its logit is -inf. Taken from the data store's metadata."""
    make_vocab_size_divisible_by: int = 128
    """Pad the vocabulary to a multiple of this times the TP size (megatron's rule)."""
    max_position_embeddings: int = 4096
    """Longest sequence the model is meant for (RoPE needs no table; used for checks)."""
    rotary_base: float = 10000.0
    """RoPE base (Llama 10000, Llama-3 500000, Seed-Coder 500000)."""
    norm_epsilon: float = 1e-6
    """RMSNorm epsilon."""
    add_qkv_bias: bool = False
    """Bias on the QKV projection (Qwen2)."""
    qk_layernorm: bool = False
    """RMSNorm over each query and key head (weights of width ``kv_channels``, shared by the
    heads) after the QKV projection and before RoPE (Qwen3; megatron-core's ``qk_layernorm``)."""
    untie_embeddings_and_output_weights: bool = True
    """Separate output layer (Llama-3, Seed-Coder); False ties it to the input embedding."""
    init_method_std: float = 0.02
    """Std of the normal initialisation."""
    logit_shift: bool = False
    """False (Stable-DiffCoder): output i predicts token i. True: output i-1 predicts token i, as a
    converted AR checkpoint does before diffusion training (docs/method.md 1)."""
    transformer_impl: str = "local"
    """'local' (megatron-core modules, runs on CPU) or 'transformer_engine' (fused TE layers, GPU)."""
    attention_backend: str = "sdpa"
    """Core attention with the diffusion mask: 'sdpa' (dense boolean mask, any device), 'flex'
    (FlexAttention BlockMask, skips masked tiles on GPU), 'te' (TE fused attention with the mask
    as an additive bias)."""
    fp8: str | None = None
    """FP8 recipe with Transformer Engine: None, 'delayed' or 'tensorwise' (current scaling)."""
    params_dtype: str = "float32"
    """Parameter/compute dtype: 'float32' (CPU, tests) or 'bfloat16' (GPU training)."""

    def __post_init__(self):
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 64 * ((8 * self.hidden_size // 3 + 63) // 64)

    def padded_vocab_size(self, tensor_model_parallel_size: int = 1) -> int:
        multiple = self.make_vocab_size_divisible_by * tensor_model_parallel_size
        return ((self.vocab_size + multiple - 1) // multiple) * multiple

    def validate(self) -> Self:
        """Raise ``UsageError`` on a bad value; returns ``self``. That the tensor-parallel size
        divides the heads is a cross-section check (``check_tensor_parallel``)."""
        for name in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                     "ffn_hidden_size", "vocab_size", "make_vocab_size_divisible_by",
                     "max_position_embeddings"):
            check_int(f"model.{name}", getattr(self, name), lo=1)
        check_choice("model.transformer_impl", self.transformer_impl, TRANSFORMER_IMPLS)
        check_choice("model.attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        check_choice("model.fp8", self.fp8, FP8_RECIPES)
        check_choice("model.params_dtype", self.params_dtype, PARAMS_DTYPES)
        if self.hidden_size % self.num_attention_heads:
            raise UsageError(
                f"model.hidden_size: {self.hidden_size} is not divisible by "
                f"model.num_attention_heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_query_groups:
            raise UsageError(
                f"model.num_query_groups: {self.num_query_groups} must divide "
                f"model.num_attention_heads={self.num_attention_heads}")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise UsageError(
                f"model.mask_token_id: got {self.mask_token_id}, expected an id in "
                f"[0, model.vocab_size={self.vocab_size})")
        self._check_transformer_engine()
        return self

    def check_tensor_parallel(self, tensor_model_parallel_size: int) -> None:
        """Raise ``UsageError`` unless the TP size divides the query and key/value heads."""
        tp = tensor_model_parallel_size
        if self.num_query_groups % tp or self.num_attention_heads % tp:
            raise UsageError(
                f"parallel.tensor_model_parallel_size: {tp} must divide model.num_attention_heads"
                f"={self.num_attention_heads} and model.num_query_groups={self.num_query_groups}")

    def _check_transformer_engine(self) -> None:
        if self.fp8 is not None and self.transformer_impl != "transformer_engine":
            raise UsageError(
                f"model.fp8: FP8 ({self.fp8!r}) needs model.transformer_impl='transformer_engine'")
        if self.attention_backend == "te" and self.transformer_impl != "transformer_engine":
            raise UsageError("model.attention_backend: 'te' needs "
                             "model.transformer_impl='transformer_engine'")
        if self.transformer_impl == "transformer_engine" or self.attention_backend == "te":
            require_transformer_engine(f"model.transformer_impl={self.transformer_impl!r}"
                                       + (f", model.fp8={self.fp8!r}" if self.fp8 else ""))
