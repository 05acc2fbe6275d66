"""``convert verify``: do an HF model and a megatron-diffusion checkpoint compute the same thing?

Both models run in float32 and in causal mode on the same random tokens (ids drawn from the HF
vocabulary, never ``[MASK]``): the HF model through its causal-LM forward, ours with the causal
mask from ``masks.dense`` and positions ``0..L-1``. Without any shift, HF output ``i`` and our
output ``i`` are the same computation (both predict token ``i+1`` for an AR checkpoint), so the
raw logits are compared position by position over the HF vocabulary, excluding the ``[MASK]``
column (``-inf`` in our model by design). A correct conversion differs only by float
rounding (fused vs separate projections): ~1e-6 on tiny models; the default tolerance 1e-3
leaves room for 8B-scale depth.
"""

from dataclasses import dataclass

import torch

from megatron_diffusion.convert.hf_config import read_hf_config
from megatron_diffusion.errors import UsageError


@dataclass
class VerifyResult:
    max_abs_diff: float
    """Largest |HF logit - our logit| over every compared position and vocabulary entry."""
    mean_abs_diff: float
    argmax_agreement: float
    """Fraction of positions where both models' top token is the same."""
    num_positions: int
    num_vocab_compared: int
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def summary(self) -> str:
        verdict = "OK" if self.passed else "FAILED"
        return (f"max |logit diff| = {self.max_abs_diff:.3e} (mean {self.mean_abs_diff:.3e}, "
                f"argmax agreement {self.argmax_agreement:.4f}) over {self.num_positions} "
                f"positions x {self.num_vocab_compared} vocabulary entries; tolerance "
                f"{self.tolerance:g}: {verdict}")


def _check_same_architecture(hf, model_cfg) -> None:
    pairs = {"num_hidden_layers": (hf.num_layers, model_cfg.num_layers),
             "hidden_size": (hf.hidden_size, model_cfg.hidden_size),
             "num_attention_heads": (hf.num_attention_heads, model_cfg.num_attention_heads),
             "num_key_value_heads": (hf.num_query_groups, model_cfg.num_query_groups),
             "intermediate_size": (hf.ffn_hidden_size, model_cfg.ffn_hidden_size),
             "head_dim": (hf.head_dim, model_cfg.kv_channels
                          or model_cfg.hidden_size // model_cfg.num_attention_heads)}
    for key, (a, b) in pairs.items():
        if a != b:
            raise UsageError(f"--hf/--checkpoint: config.json {key}={a} but the checkpoint's "
                             f"model has {b}; they are not the same model")
    if hf.qk_norm != model_cfg.qk_layernorm:
        raise UsageError(f"--hf/--checkpoint: config.json is a {hf.architecture} (q/k norms: "
                         f"{hf.qk_norm}) but the checkpoint's model has model.qk_layernorm="
                         f"{model_cfg.qk_layernorm}; they are not the same model")
    if hf.vocab_size > model_cfg.vocab_size:
        raise UsageError(f"--hf/--checkpoint: config.json vocab_size={hf.vocab_size} exceeds the "
                         f"checkpoint's vocabulary ({model_cfg.vocab_size})")


@torch.no_grad()
def verify(hf_dir, checkpoint, *, batch_size: int = 2, seq_len: int = 32, seed: int = 0,
           tolerance: float = 1e-3) -> VerifyResult:
    from transformers import AutoModelForCausalLM

    from megatron_diffusion.config import config_from_dict
    from megatron_diffusion.convert.hf_to_mcore import build_empty_model
    from megatron_diffusion.masks.config import AttentionConfig
    from megatron_diffusion.masks.dense import attention_allowed, to_megatron_mask
    from megatron_diffusion.parallel.process_groups import initialize_model_parallel
    from megatron_diffusion.training.checkpoint import (
        load_checkpoint,
        read_meta,
        resolve_checkpoint,
    )

    for option, value in (("--batch-size", batch_size), ("--seq-len", seq_len)):
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"{option}: got {value!r}, expected an integer >= 1")
    hf = read_hf_config(hf_dir)
    ckpt = resolve_checkpoint(checkpoint)
    model_cfg = config_from_dict(read_meta(ckpt)["config"]).model
    _check_same_architecture(hf, model_cfg)
    if seq_len > model_cfg.max_position_embeddings:
        raise UsageError(f"--seq-len: {seq_len} exceeds max_position_embeddings="
                         f"{model_cfg.max_position_embeddings}")
    model_cfg.params_dtype = "float32"
    initialize_model_parallel(1, 1)
    ours = build_empty_model(model_cfg)
    try:
        load_checkpoint(ckpt, [ours])
    except Exception as e:  # dist_checkpointing: missing keys, shape mismatch
        raise UsageError(f"--checkpoint: {ckpt} does not load into its own config's model: "
                         f"{str(e).splitlines()[0]}") from None
    ours.eval()
    device = next(ours.parameters()).device
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir).float().eval().to(device)

    mask_id = model_cfg.mask_token_id
    allowed_ids = torch.tensor([i for i in range(hf.vocab_size) if i != mask_id])
    g = torch.Generator().manual_seed(seed)
    tokens_BL = allowed_ids[torch.randint(len(allowed_ids), (batch_size, seq_len), generator=g)]
    tokens_BL, allowed_ids = tokens_BL.to(device), allowed_ids.to(device)

    hf_logits_BLV = hf_model(input_ids=tokens_BL).logits.float()[..., : hf.vocab_size]
    position_ids_BL = torch.arange(seq_len, device=device).expand(batch_size, -1)
    causal = AttentionConfig(mode="causal")
    mask_B1LL = to_megatron_mask(attention_allowed(causal, torch.zeros_like(tokens_BL)))
    our_logits_BLV = ours(tokens_BL, position_ids_BL, mask_B1LL).float()[..., : hf.vocab_size]

    diff_BLV = (hf_logits_BLV[..., allowed_ids] - our_logits_BLV[..., allowed_ids]).abs()
    agree = (hf_logits_BLV[..., allowed_ids].argmax(-1) ==
             our_logits_BLV[..., allowed_ids].argmax(-1)).float().mean()
    return VerifyResult(max_abs_diff=diff_BLV.max().item(), mean_abs_diff=diff_BLV.mean().item(),
                        argmax_agreement=agree.item(), num_positions=batch_size * seq_len,
                        num_vocab_compared=len(allowed_ids), tolerance=tolerance)
