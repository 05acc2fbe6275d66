"""Learning-rate schedules: linear warmup, then cosine / linear / constant / WSD.

A pure function of the step, so a resumed run needs only the step to continue the schedule
exactly (no scheduler state to checkpoint beyond it).

WSD (warmup-stable-decay, as used for multi-stage CPT): after warmup the rate stays at ``lr``
until the last ``wsd_decay_fraction`` of training, then decays linearly to ``min_lr``.
"""

import math


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int,
          style: str, wsd_decay_fraction: float = 0.1) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if style == "constant":
        return lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if style == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    if style == "linear":
        return lr - (lr - min_lr) * progress
    if style == "wsd":
        decay_start = total_steps - max(1, int(round(wsd_decay_fraction * total_steps)))
        if step < decay_start:
            return lr
        frac = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
        return lr - (lr - min_lr) * frac
    raise ValueError(f"unknown lr decay style {style!r}")
