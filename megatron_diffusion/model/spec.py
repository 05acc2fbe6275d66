"""Layer specs: which modules build a Transformer layer, chosen as data (megatron ``ModuleSpec``).

The backend is selected here, never by ``if use_te`` branches inside layers:

* ``local``: megatron-core's own modules (RMSNorm, SwiGLU MLP, column/row parallel linears);
  runs on CPU.
* ``transformer_engine``: TE's fused LayerNorm+Linear and MLP modules (needed for FP8).

``qk_layernorm`` (Qwen3) puts megatron's own q/k norm modules into either spec
(``self_attention.q_layernorm`` / ``k_layernorm``: the same checkpoint keys in both).

Either way the core attention is ``DiffusionCoreAttention`` (dense-mask SDPA or FlexAttention;
``UlyssesCoreAttention`` around it under context parallelism),
except with ``attention_backend='te'`` where TE's own fused attention takes the mask as an
additive bias.
"""

import copy

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_diffusion.model.attention import DiffusionCoreAttention
from megatron_diffusion.model.config import ModelConfig


def layer_spec(cfg: ModelConfig, context_parallel_size: int = 1) -> ModuleSpec:
    if cfg.transformer_impl == "transformer_engine":
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        spec = copy.deepcopy(get_gpt_layer_with_transformer_engine_spec(
            qk_layernorm=cfg.qk_layernorm))
    else:
        spec = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm",
                                                      qk_layernorm=cfg.qk_layernorm))
    if cfg.attention_backend != "te":
        core = DiffusionCoreAttention
        if context_parallel_size > 1:  # all-to-all (Ulysses) context parallelism
            from megatron_diffusion.model.ulysses import UlyssesCoreAttention as core
        spec.submodules.self_attention.submodules.core_attention = core
    else:  # TE fused attention: the diffusion mask arrives as an additive attention_bias
        from megatron.core.transformer.enums import AttnMaskType

        spec.submodules.self_attention.params = dict(spec.submodules.self_attention.params,
                                                     attn_mask_type=AttnMaskType.no_mask)
    return spec
