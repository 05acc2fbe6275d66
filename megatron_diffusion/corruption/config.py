"""Configuration of the forward (corruption) process: schedule, weights, warmup, edit stage.

See docs/corruption.md for the user-facing description and docs/method.md 1, 2, 3, 5 for the maths.
"""

import math
from dataclasses import dataclass
from typing import Self

from megatron_diffusion.errors import UsageError, check_choice, check_int, check_range
from megatron_diffusion.corruption.schedules import SCHEDULES

WEIGHTINGS = ("elbo", "none")
BLOCK_WARMUPS = ("floor", "cap")
TRAJECTORY_WEIGHTINGS = ("inverse_rate", "uniform")
EDIT_OPS = ("deletion", "insertion", "substitution")


@dataclass
class CorruptionConfig:
    """How the loader corrupts clean rows: the noise schedule and its ELBO weights, the corruption
    warmup, the block-wise clipped rate, edit corruption and the trajectory objective
    (docs/corruption.md)."""

    schedule: str = "linear"
    """Noise schedule ``u(t)``: 'linear', 'cosine' (= 'cosine-bd3lms', ``1 - cos(pi t/2)``),
    'cosine-dllm' (``sin(pi t/2)``) or 'log-linear' (corruption/schedules.py)."""
    weighting: str = "elbo"
    """'elbo': masked tokens weigh ``w(t) = u'(t)/u(t)`` (``1/t`` linear; ``u'(t)/u_blk`` in block
    mode); 'none': every loss token weighs 1."""
    t_min: float = 1e-3
    """Outside warmup ``t ~ U(t_min, 1)``: keeps ``w(t) <= u'(t_min)/u(t_min)`` (1000 for linear) so
    a row with tiny ``t`` cannot blow up the loss. 0 allows ``t`` arbitrarily close to 0."""
    warmup_steps: int = 0
    """Corruption warmup length ``S_warmup`` in optimizer steps (Stable-DiffCoder 3.2); 0 = off.
    During warmup ``t ~ U(0, u_max(step))`` and ``w = 1``."""
    warmup_u_init: float = 1e-3
    """``u_init``: the warmup cap at step 0; ``u_max(s) = u_init + (1 - u_init) * s / S_warmup``."""
    block_warmup: str = "floor"
    """Block mode during the warmup: 'floor' (default) keeps the rate ``max(u(t_b), 1/B)``, so
    the warmup starts at ~33% masking for B=4; 'cap' lets the warmup cap apply to the per-block
    rate too (``u(t_b) <= u_max``, no 1/B floor), the one-token fallback kept: ~1/B at step 0."""
    edit_stage_fraction: float = 0.2
    """Fraction of ``total_steps`` at the END of training that adds edit corruption (Seed Diffusion
    3.1 TSC: last 20%); 0 = never. The edit stage starts at
    ``total_steps - round(edit_stage_fraction * total_steps)``."""
    edit_row_fraction: float = 1.0
    """Share of the edit stage's rows that are edited (each row independently). Edited rows get
    the edit-stage loss (every non-prompt token); the others are plain mask-stage rows (masked
    tokens, ELBO weight), so 0.5 spends half the rows on each term of Seed Diffusion eq. 5/6.
    Seed Diffusion 3.1 does not give the share; 1.0 (default) edits every row."""
    edit_max_rate: float = 0.1
    """``eps``: the edit budget is ``k_t = stochastic_round(eps * u(t) * n)``, ``n`` the number of
    non-prompt tokens of the row, capped at ``floor(eps * n)``, so ``k_t / L <= eps``. In block
    mode each block's budget is ``stochastic_round(eps * u(t_b) * n_b) <= ceil(eps * n_b)``, so a
    row can exceed ``eps L`` (docs/corruption.md, departures)."""
    edit_window: int = 8
    """Realignment window ``W`` of a length-changing edit in single mode: a segment ends every
    ``W`` tokens, so one deletion shifts at most ``W - 1`` tokens (the Hamming distance stays near
    the Levenshtein distance); 0 = realign only at the end of the document run (the whole row
    shifts). Block mode always realigns inside each block (and inside ``W`` if smaller)."""
    edit_deletion_prob: float = 1 / 3
    """Probability that one edit operation is a deletion."""
    edit_insertion_prob: float = 1 / 3
    """Probability that one edit operation is an insertion of a random token."""
    edit_substitution_prob: float = 1 / 3
    """Probability that one edit operation is a substitution by a different random token."""
    trajectory_fraction: float = 0.5
    """Rows with a reveal order (``data.trajectories``): the share trained with the trajectory
    objective (Seed Diffusion eq. 9: a step ``s`` per block, the positions revealed at ``s`` or
    later masked); the others get the ordinary ELBO corruption of the same row. The orders come
    from ``distill/`` (docs/distillation.md)."""
    trajectory_weighting: str = "inverse_rate"
    """Weight ``lambda`` of the trajectory objective's masked tokens: 'inverse_rate' ``1/g_s``
    (``g_s`` the block's masked share at step ``s``, the ELBO's ``1/t`` for a linear schedule)
    or 'uniform' (1)."""

    def validate(self) -> Self:
        check_choice("schedule", self.schedule, tuple(SCHEDULES))
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_choice("block_warmup", self.block_warmup, BLOCK_WARMUPS)
        check_range("t_min", self.t_min, 0.0, 1.0, hi_open=True)
        check_int("warmup_steps", self.warmup_steps, lo=0)
        check_range("warmup_u_init", self.warmup_u_init, 0.0, 1.0, lo_open=True)
        check_range("edit_stage_fraction", self.edit_stage_fraction, 0.0, 1.0)
        check_range("edit_max_rate", self.edit_max_rate, 0.0, 1.0, lo_open=True)
        check_range("edit_row_fraction", self.edit_row_fraction, 0.0, 1.0)
        check_int("edit_window", self.edit_window, lo=0)
        check_range("trajectory_fraction", self.trajectory_fraction, 0.0, 1.0)
        check_choice("trajectory_weighting", self.trajectory_weighting, TRAJECTORY_WEIGHTINGS)
        probs = self.edit_op_probs()
        for name, p in zip(EDIT_OPS, probs):
            check_range(f"edit_{name}_prob", p, 0.0, 1.0)
        if not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise UsageError(
                "edit_deletion_prob + edit_insertion_prob + edit_substitution_prob: "
                f"got {sum(probs)!r}, expected 1"
            )
        return self

    def edit_op_probs(self) -> tuple[float, float, float]:
        """(deletion, insertion, substitution) probabilities, in ``EDIT_OPS`` order."""
        return (self.edit_deletion_prob, self.edit_insertion_prob, self.edit_substitution_prob)

    def u_max_at(self, step: int) -> float:
        """Warmup cap on ``t`` at optimizer ``step``; 1.0 once warmup is over (or off)."""
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return 1.0
        return self.warmup_u_init + (1.0 - self.warmup_u_init) * max(step, 0) / self.warmup_steps

    def in_warmup(self, step: int) -> bool:
        return self.warmup_steps > 0 and step < self.warmup_steps

    def edit_start_step(self, total_steps: int) -> int:
        """First step of the edit stage (``total_steps`` or more when there is none)."""
        return total_steps - int(round(self.edit_stage_fraction * total_steps))

    def stage_at(self, step: int, total_steps: int) -> str:
        """'edit' in the last ``edit_stage_fraction`` of training, 'mask' before."""
        if self.edit_stage_fraction == 0:
            return "mask"
        return "edit" if step >= self.edit_start_step(total_steps) else "mask"

