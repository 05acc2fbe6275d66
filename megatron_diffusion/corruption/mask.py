"""Mask-based forward process (docs/method.md 1, 2): corruption levels and independent masking.

Each row (single mode) or block (block mode) draws a level ``t``:

* outside warmup ``t ~ U(t_min, 1)`` (``t_min`` bounds the ELBO weight ``u'(t)/u(t)``);
* during the corruption warmup (Stable-DiffCoder 3.2) ``t ~ U(0, u_max(step))`` and the weight is 1.
  The cap on ``t`` is the schedule's ``t_cap(u_max)``, so the mask rate stays below ``u_max``
  (``t <= u_max`` for the schedules with ``u(t) <= t``; not ``cosine-dllm``, where ``u(t) > t``).

Then every eligible (non-prompt) token is masked independently with probability ``rate``.

Shapes: ``B`` rows, ``L`` tokens per row, ``N`` levels per row.
"""

import torch


def sample_levels(num_rows: int, num_levels: int, *, t_min: float, u_max: float, warmup: bool,
                  generator: torch.Generator, device=None) -> torch.Tensor:
    """float32 ``[B, N]`` corruption levels (see module docstring)."""
    uniform_BN = torch.rand(num_rows, num_levels, generator=generator, device=device)
    if warmup:
        return uniform_BN * u_max
    return t_min + (1.0 - t_min) * uniform_BN


def sample_mask(rate_BL: torch.Tensor, eligible_BL: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
    """bool ``[B, L]``: True where a token is masked (independently with prob ``rate_BL``)."""
    uniform_BL = torch.rand(rate_BL.shape, generator=generator, device=rate_BL.device)
    return (uniform_BL < rate_BL) & eligible_BL
