"""``LossConfig``: how the per-token losses are combined (normalisation, objective, AR term).

No megatron import: the run config loads without it. The loss itself is ``elbo.py``.
"""

from dataclasses import dataclass
from typing import Self

from megatron_diffusion.errors import check_choice, check_range

NORMALIZATIONS = ("token", "sequence")
OBJECTIVES = ("diffusion", "ar")


@dataclass
class LossConfig:
    """The training objective: the diffusion ELBO (and how it is normalised) or AR, plus an optional
    AR loss on the clean stream."""

    normalization: str = "token"
    """'token' (sum over the global batch / eligible tokens) or 'sequence' (per-row mean)."""
    objective: str = "diffusion"
    """'diffusion' (ELBO on the corrupted input) or 'ar' (next-token loss, the AR baseline)."""
    ar_loss_weight: float = 0.0
    """Weight of an extra next-token loss on the clean stream (block mode with a causal clean
    stream only: it needs the clean half to be causal; checked by ``RunConfig.validate``)."""

    def validate(self) -> Self:
        check_choice("loss.normalization", self.normalization, NORMALIZATIONS)
        check_choice("loss.objective", self.objective, OBJECTIVES)
        check_range("loss.ar_loss_weight", self.ar_loss_weight, lo=0.0)
        return self
