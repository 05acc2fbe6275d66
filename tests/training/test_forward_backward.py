"""``ForwardSpec``: the one description of how a run's micro-batches go through model and loss."""

import dataclasses

import pytest

from megatron_diffusion.config import RunConfig
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.training.forward_backward import ForwardSpec


def test_spec_of_a_run_config_and_its_loss_keywords():
    cfg = RunConfig()
    cfg.attention = AttentionConfig(mode="block", block_size=8, visibility="isolated")
    cfg.model.logit_shift, cfg.model.attention_backend = True, "flex"
    spec = ForwardSpec.of(cfg)
    assert (spec.attention, spec.loss, spec.logit_shift, spec.backend) == \
        (cfg.attention, cfg.loss, True, "flex")
    assert spec.loss_kwargs() == {"logit_shift": True, "block_size": 8, "visibility": "isolated"}


def test_spec_is_frozen_and_an_evaluation_swaps_only_the_loss():
    spec = ForwardSpec(AttentionConfig(mode="bidirectional"), LossConfig(objective="ar"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.backend = "te"
    plain = dataclasses.replace(spec, loss=LossConfig())
    assert plain.loss.objective == "diffusion" and plain.attention is spec.attention
    assert (plain.logit_shift, plain.backend) == (False, "sdpa")
