import pytest

from megatron_diffusion.corruption.config import CorruptionConfig
from megatron_diffusion.errors import UsageError


def test_defaults_validate():
    cfg = CorruptionConfig().validate()
    assert cfg.edit_stage_fraction == 0.2 and cfg.warmup_u_init == 1e-3


@pytest.mark.parametrize("field, value", [
    ("schedule", "square"), ("weighting", "uniform"), ("block_warmup", "none"), ("t_min", 1.0), ("t_min", -0.1),
    ("warmup_steps", -1), ("warmup_steps", 2.5), ("warmup_u_init", 0.0),
    ("edit_stage_fraction", 1.5), ("edit_max_rate", 0.0), ("edit_deletion_prob", -0.1),
    ("edit_window", -1), ("edit_window", 2.5), ("edit_row_fraction", 1.5),
    ("edit_row_fraction", -0.1),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(UsageError, match=field):
        CorruptionConfig(**{field: value}).validate()


def test_probs_must_sum_to_one():
    with pytest.raises(UsageError, match="expected 1"):
        CorruptionConfig(edit_deletion_prob=0.5, edit_insertion_prob=0.5,
                         edit_substitution_prob=0.5).validate()


def test_u_max_by_hand():
    cfg = CorruptionConfig(warmup_steps=10, warmup_u_init=1e-3)
    assert cfg.u_max_at(0) == pytest.approx(1e-3)
    assert cfg.u_max_at(5) == pytest.approx(1e-3 + 0.999 * 0.5)
    assert cfg.u_max_at(10) == 1.0 and cfg.u_max_at(1000) == 1.0
    assert cfg.in_warmup(9) and not cfg.in_warmup(10)
    assert CorruptionConfig(warmup_steps=0).u_max_at(0) == 1.0


def test_stage_is_last_fraction():
    cfg = CorruptionConfig(edit_stage_fraction=0.2)
    assert cfg.edit_start_step(100) == 80
    assert cfg.stage_at(79, 100) == "mask" and cfg.stage_at(80, 100) == "edit"
    off = CorruptionConfig(edit_stage_fraction=0.0)
    assert off.stage_at(10**6, 100) == "mask"
