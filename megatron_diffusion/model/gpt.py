"""``DiffusionGPTModel``: megatron-core's ``GPTModel`` with the two changes diffusion needs.

1. **RoPE from position ids.** megatron's ``GPTModel`` rotates by ``0..S-1`` whatever
   ``position_ids`` say. Block diffusion feeds ``x_t (+) x0`` whose clean copy repeats the noisy
   copy's positions, and isolated packing restarts positions per document (docs/method.md 3, 4), so
   the rotary angles are computed from ``position_ids`` (``[b, s]``) instead; megatron's rotary
   kernels broadcast a ``[s, b, 1, d]`` table.
2. **[MASK] is never predicted.** A forward hook on the output layer adds ``-inf`` to the logit
   of the mask token and of the vocabulary padding, on whichever tensor-parallel rank owns them.
3. **The LM head where the loss reads.** ``forward(..., logits_at_BS=needed)`` (bool ``[b, s]``)
   applies the output layer to the final hidden states of those positions only and returns
   ``[1, K, V/tp]`` (row-major; ``loss/readout.py``). The weight gradient is still one product
   over all rows (zeros elsewhere): a product over fewer rows sums in another order, and the
   losses keep their bits. Under sequence parallelism the full logits come back.

Everything else (layers, TP/PP, checkpoint sharding) is megatron-core's.
"""

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_diffusion.model.config import ModelConfig
from megatron_diffusion.model.spec import layer_spec
from megatron_diffusion.parallel import context_parallel


class DiffusionGPTModel(GPTModel):
    def __init__(self, *args, mask_token_id: int, real_vocab_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_token_id = mask_token_id
        self.real_vocab_size = real_vocab_size
        self._logits_at_BS = None
        if hasattr(self, "rotary_pos_emb"):  # RoPE comes from the CP rank's global positions,
            self.rotary_pos_emb.cp_group = None  # never from megatron's zig-zag CP slicing
        if self.post_process:
            tp_rank = parallel_state.get_tensor_model_parallel_rank()
            local = self.vocab_size // parallel_state.get_tensor_model_parallel_world_size()
            ids = torch.arange(tp_rank * local, (tp_rank + 1) * local)
            forbidden = (ids == mask_token_id) | (ids >= real_vocab_size)
            bias = torch.zeros(local, dtype=torch.float32)
            bias[forbidden] = float("-inf")
            self.register_buffer("forbidden_logit_bias", bias, persistent=False)
            self.output_layer.register_forward_hook(self._forbid_logits)

    def forward(self, *args, logits_at_BS: torch.Tensor | None = None, **kwargs):
        """megatron's forward; ``logits_at_BS``: the LM head only there (module docstring)."""
        self._logits_at_BS = logits_at_BS
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._logits_at_BS = None

    def _postprocess(self, hidden_states, **kwargs):
        at_BS = self._logits_at_BS
        if at_BS is None or not self.post_process or self.config.sequence_parallel:
            return super()._postprocess(hidden_states=hidden_states, **kwargs)
        weight_VH = (self.shared_embedding_or_output_weight()
                     if self.share_embeddings_and_output_weights else self.output_layer.weight)
        # the output layer's own input handling without sequence parallelism: its backward
        # all-reduces the hidden-state gradient over tensor-parallel ranks
        hidden_SBH = copy_to_tensor_model_parallel_region(hidden_states)
        S, B = hidden_SBH.shape[:2]
        dev = at_BS.device
        rows_BS = torch.arange(S, device=dev) * B + torch.arange(B, device=dev)[:, None]
        logits_KV = _HeadRows.apply(hidden_SBH.reshape(S * B, -1), weight_VH, rows_BS[at_BS])
        return (logits_KV + self.forbidden_logit_bias.to(logits_KV.dtype)).unsqueeze(0)

    def _forbid_logits(self, module, inputs, output):
        logits, bias = output
        return logits + self.forbidden_logit_bias.to(logits.dtype), bias

    def _preprocess(self, *args, **kwargs):
        out = super()._preprocess(*args, **kwargs)
        position_ids = kwargs["position_ids"] if "position_ids" in kwargs else args[1]
        if out[1] is None or position_ids is None:
            return out
        inv_freq = self.rotary_pos_emb.inv_freq.to(position_ids.device)
        freqs = position_ids.to(inv_freq.dtype)[..., None] * inv_freq  # [b, s, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # megatron's non-interleaved layout
        return (out[0], emb.transpose(0, 1)[:, :, None, :]) + tuple(out[2:])


class _HeadRows(torch.autograd.Function):
    """``hidden[rows] @ weight.T`` with the bits of the full product's rows.

    A row of a matrix product comes out the same whatever the other rows, except through the
    BLAS's few-row paths (measured on this project's CPU, MKL: fewer than 12 rows with 2 threads,
    fewer than 4 with 1): fewer than ``_FEW_ROWS`` rows take the full product. Other BLAS (GPU)
    may choose kernels by row count anyway; there the losses agree to rounding.
    The weight gradient always sums over every row of ``hidden`` (zero where not selected), in
    the order of megatron's linear layer; a sum over the selected rows alone rounds otherwise.
    """

    @staticmethod
    def forward(ctx, hidden_MH, weight_VH, rows_K):
        ctx.save_for_backward(hidden_MH, weight_VH, rows_K)
        if rows_K.numel() < _FEW_ROWS:
            return (hidden_MH @ weight_VH.t()).index_select(0, rows_K)
        return hidden_MH.index_select(0, rows_K) @ weight_VH.t()

    @staticmethod
    def backward(ctx, grad_KV):
        hidden_MH, weight_VH, rows_K = ctx.saved_tensors
        grad_MV = grad_KV.new_zeros(hidden_MH.shape[0], grad_KV.shape[1]).index_copy_(0, rows_K,
                                                                                       grad_KV)
        if rows_K.numel() < _FEW_ROWS:
            grad_hidden = grad_MV @ weight_VH
        else:
            grad_hidden = torch.zeros_like(hidden_MH).index_copy_(0, rows_K, grad_KV @ weight_VH)
        return grad_hidden, grad_MV.t().matmul(hidden_MH), None


_FEW_ROWS = 16


def transformer_config(cfg: ModelConfig, *, tensor_model_parallel_size: int = 1,
                       pipeline_model_parallel_size: int = 1,
                       virtual_pipeline_model_parallel_size: int | None = None,
                       sequence_parallel: bool = False, use_cpu_initialization: bool | None = None,
                       recompute: bool = False) -> TransformerConfig:
    """Map our ``ModelConfig`` (+ parallel sizes) onto megatron's ``TransformerConfig``.

    FP8: ``fp8='delayed'`` -> ``fp8='hybrid', fp8_recipe='delayed'`` (E4M3 forward, E5M2
    backward, amax history); ``'tensorwise'`` -> ``fp8='hybrid', fp8_recipe='tensorwise'``
    (current scaling). Both run on H100; blockwise needs CUDA >= 12.9, MXFP8 Blackwell.
    """
    on_cpu = not torch.cuda.is_available()
    dtype = torch.bfloat16 if cfg.params_dtype == "bfloat16" else torch.float32
    fp8_kwargs = {}
    if cfg.fp8 is not None:
        fp8_kwargs = dict(fp8="hybrid", fp8_recipe=cfg.fp8)
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        ffn_hidden_size=cfg.ffn_hidden_size,
        kv_channels=cfg.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=cfg.add_qkv_bias,
        qk_layernorm=cfg.qk_layernorm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=cfg.init_method_std,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        sequence_parallel=sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        use_cpu_initialization=on_cpu if use_cpu_initialization is None else use_cpu_initialization,
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        batch_p2p_sync=not on_cpu,
        batch_p2p_comm=not on_cpu,
        recompute_granularity="full" if recompute else None,
        recompute_method="uniform" if recompute else None,
        recompute_num_layers=1 if recompute else None,
        **fp8_kwargs,
    )


def build_model(cfg: ModelConfig, tcfg: TransformerConfig, *, pre_process: bool = True,
                post_process: bool = True, vp_stage: int | None = None) -> DiffusionGPTModel:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    return DiffusionGPTModel(
        config=tcfg,
        transformer_layer_spec=layer_spec(cfg, context_parallel.world_size()),
        vocab_size=cfg.padded_vocab_size(tp),
        max_sequence_length=2 * cfg.max_position_embeddings,  # block mode feeds 2L tokens
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=not cfg.untie_embeddings_and_output_weights,
        position_embedding_type="rope",
        rotary_base=cfg.rotary_base,
        vp_stage=vp_stage,
        mask_token_id=cfg.mask_token_id,
        real_vocab_size=cfg.vocab_size,
    )


def build_model_chunks(cfg: ModelConfig, tcfg: TransformerConfig) -> list[DiffusionGPTModel]:
    """One model chunk per virtual pipeline stage (a list of one without interleaving)."""
    vpp = tcfg.virtual_pipeline_model_parallel_size
    if vpp is None:
        return [build_model(cfg, tcfg,
                            pre_process=parallel_state.is_pipeline_first_stage(),
                            post_process=parallel_state.is_pipeline_last_stage())]
    return [
        build_model(cfg, tcfg,
                    pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False,
                                                                        vp_stage=i),
                    post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False,
                                                                       vp_stage=i),
                    vp_stage=i)
        for i in range(vpp)
    ]
