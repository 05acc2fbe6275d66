"""Noise schedules: the mask probability ``u(t)``, its derivative and the ELBO weight.

A schedule maps the corruption level ``t`` in ``[0, 1]`` to ``u(t)``, the probability that a
token is replaced by ``[MASK]`` (docs/method.md 1), with ``u(0) = 0`` and ``u(1) ~= 1``. The
continuous-time ELBO weights each masked token's cross-entropy by ``w(t) = u'(t) / u(t)``
(Stable-DiffCoder eq. 4), which diverges at ``t = 0``: callers keep ``t >= t_min``. The
schedules (``linear``, ``cosine`` = ``cosine-bd3lms``, ``cosine-dllm``, ``log-linear``), their
formulas and where each comes from are in docs/corruption.md "Schedules". The corruption
warmup's ``t_cap(u_max)`` is the largest ``t`` with ``u(t) <= u_max``, so its cap is always a
cap on the mask rate.
"""

import math
from dataclasses import dataclass
from typing import Callable

import torch

from megatron_diffusion.errors import check_choice

LOG_LINEAR_EPS = 1e-3
"""bd3lms/MDLM's ``eps`` for the log-linear schedule: ``u(1) = 1 - LOG_LINEAR_EPS``."""


@dataclass(frozen=True)
class Schedule:
    """``u(t)`` and ``u'(t)`` as elementwise torch functions; ``weight`` is ``u'/u``."""

    name: str
    u: Callable[[torch.Tensor], torch.Tensor]
    du: Callable[[torch.Tensor], torch.Tensor]

    t_cap: Callable[[float], float] = lambda u_max: u_max
    """Warmup cap on ``t`` for a cap ``u_max`` on the mask rate (module docstring)."""

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """ELBO weight ``u'(t) / u(t)`` (infinite at ``t = 0``)."""
        return self.du(t) / self.u(t)


COSINE_BD3LMS = Schedule(
    "cosine-bd3lms",
    u=lambda t: 2.0 * torch.sin(0.25 * math.pi * t) ** 2,  # = 1 - cos(pi t/2), no cancellation
    du=lambda t: 0.5 * math.pi * torch.sin(0.5 * math.pi * t),
)

SCHEDULES: dict[str, Schedule] = {
    "linear": Schedule("linear", u=lambda t: t.clone(), du=torch.ones_like),
    "cosine": COSINE_BD3LMS,
    "cosine-bd3lms": COSINE_BD3LMS,
    "cosine-dllm": Schedule(
        "cosine-dllm",
        u=lambda t: torch.sin(0.5 * math.pi * t),
        du=lambda t: 0.5 * math.pi * torch.cos(0.5 * math.pi * t),
        t_cap=lambda u_max: 2.0 / math.pi * math.asin(min(u_max, 1.0)),
    ),
    "log-linear": Schedule(
        "log-linear",
        u=lambda t: (1.0 - LOG_LINEAR_EPS) * t,
        du=lambda t: torch.full_like(t, 1.0 - LOG_LINEAR_EPS),
    ),
}


def get_schedule(name: str) -> Schedule:
    """The schedule registered under ``name`` (UsageError listing the names otherwise)."""
    check_choice("schedule", name, tuple(SCHEDULES))
    return SCHEDULES[name]
