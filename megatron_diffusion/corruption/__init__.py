"""Forward (corruption) processes: mask, block and edit corruption in the data loader.

Pure torch with explicit generators; no megatron. Pipeline position: data -> corruption -> masks.
``Corruptor`` is the front (corruptor.py); the pieces are schedules.py (``u(t)``, ``w(t)``),
mask.py (levels, independent masking), block.py (clipped per-block rate and fallback) and
edit.py (deletion/insertion/substitution with realignment). Users: docs/corruption.md.
"""

from megatron_diffusion.corruption.config import CorruptionConfig
from megatron_diffusion.corruption.corruptor import MODES, Corruptor
from megatron_diffusion.corruption.schedules import SCHEDULES, Schedule, get_schedule

__all__ = ["CorruptionConfig", "Corruptor", "MODES", "SCHEDULES", "Schedule", "get_schedule"]
