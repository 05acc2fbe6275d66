"""Optional GPU dependencies, imported in this one place.

Transformer Engine (fused layers, FP8) and FlashAttention need CUDA. They are extras
(``pip install 'megatron-diffusion[te]'``); asking for them without the package fails at config
time with a message that says how to install it. This matters for FP8 in particular: megatron-core
accepts ``TransformerConfig(fp8=...)`` without TE and then silently trains in BF16.
"""

import importlib.util

from megatron_diffusion.errors import UsageError

TE_INSTALL_HINT = (
    "install Transformer Engine on a CUDA machine: pip install 'megatron-diffusion[te]' "
    "(transformer-engine[pytorch]>=2.9,<2.12 for megatron-core 0.16), or set "
    "model.transformer_impl=local model.fp8=null"
)


def have_transformer_engine() -> bool:
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # installed but unusable (no CUDA / cuDNN)
        return False
    return True


def require_transformer_engine(what: str) -> None:
    """Fail with an actionable one-line error when TE is missing."""
    if not have_transformer_engine():
        raise UsageError(f"{what} needs Transformer Engine, which is not installed or cannot be "
                         f"imported on this machine; {TE_INSTALL_HINT}")


def have_flex_attention() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True
