"""``TrainStep``: one optimizer step on a real one-layer megatron model (one process, CPU)."""

import math
import time

import pytest
import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

from megatron_diffusion.config import RunConfig
from megatron_diffusion.errors import UsageError
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model.gpt import transformer_config
from megatron_diffusion.parallel.process_groups import initialize_model_parallel
from megatron_diffusion.training.model_setup import build_training_model
from megatron_diffusion.training.observability import RunLogger
from megatron_diffusion.training.forward_backward import ForwardSpec
from megatron_diffusion.training.train_step import StepCost, TrainStep
from tests.helpers import synthetic_batch, tiny_model_config

ATTN = AttentionConfig(mode="bidirectional")
RECORD_FIELDS = {"step", "loss", "ce", "lr", "grad_norm", "tokens_per_s", "step_time_s", "stage"}


@pytest.fixture(scope="module")
def model():
    initialize_model_parallel(1, 1, seed=0)
    cfg = tiny_model_config(num_layers=1)
    chunks = build_training_model(cfg, transformer_config(cfg))
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=1.0),
                                       chunks)
    return chunks, optimizer


def _step_fn(model, said, *, max_nan_steps=2, peak=None):
    chunks, optimizer = model
    cost = StepCost(tokens=16, flops=1e9, peak_flops=peak, world_size=1)
    return TrainStep(chunks, optimizer, ForwardSpec(ATTN, LossConfig()), cost,
                     max_nan_steps=max_nan_steps, say=said.append)


def _batches(poison=False):
    batch = synthetic_batch(ATTN, rows=2, seq_len=8, seed=0)
    if poison:
        batch.loss_weights_BL[0, 0] = float("inf")  # an overflowing weight: an infinite loss
    return [batch]


def _run(step_fn, step, *, poison=False, lr=1e-4):
    return step_fn(_batches(poison), step=step, lr=lr, started=time.perf_counter())


def _weights(model):
    return [p.detach().clone() for c in model[0] for p in c.parameters()]


def test_a_step_updates_the_weights_and_returns_the_metrics_record(model, tmp_path):
    said, before = [], _weights(model)
    record = _run(_step_fn(model, said), 3, lr=2e-4)
    assert set(record) == RECORD_FIELDS  # no peak FLOP/s known: no mfu
    assert record["step"] == 3 and record["lr"] == 2e-4
    assert record["stage"] == "mask" and math.isfinite(record["loss"]) and record["grad_norm"] > 0
    assert record["tokens_per_s"] == pytest.approx(16 / record["step_time_s"])
    assert all(g["lr"] == 2e-4 for g in model[1].param_groups)
    assert any(not torch.equal(a, b) for a, b in zip(before, _weights(model)))
    logger = RunLogger(tmp_path, enabled=True, total_steps=10, start_step=0, wandb_mode="off",
                       wandb_project="", config={}, tensorboard=False)
    assert logger.plain_line(record).startswith("iteration  3/10 | loss ")  # what a log needs
    logger.close()


def test_mfu_is_reported_when_the_peak_is_known(model):
    record = _run(_step_fn(model, [], peak=1e12), 1)
    assert record["mfu"] == pytest.approx(1e9 / record["step_time_s"] / 1e12)


def test_a_non_finite_loss_is_skipped_counted_and_stops_the_run_when_repeated(model):
    said = []
    step_fn = _step_fn(model, said, max_nan_steps=2)
    before = _weights(model)
    assert _run(step_fn, 5, poison=True) is None
    assert step_fn.nan_in_a_row == 1 and said == ["step 5: non-finite loss inf, step skipped "
                                                  "(1/2 in a row)"]
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(model)))  # no optimizer step
    assert _run(step_fn, 6) is not None
    assert step_fn.nan_in_a_row == 0  # a finite step resets the count
    for step in (7, 8):
        assert _run(step_fn, step, poison=True) is None
    with pytest.raises(UsageError, match=r"3 consecutive non-finite steps \(steps 7-9, the last: "
                                         "non-finite loss inf"):
        _run(step_fn, 9, poison=True)


def test_step_cost_counts_both_streams_in_block_mode():
    cfg = RunConfig()
    cfg.model = tiny_model_config(num_layers=1)
    cfg.data.seq_len, cfg.data.global_batch_size = 16, 4
    cfg.attention = AttentionConfig(mode="block", block_size=4)
    block = StepCost.of(cfg, num_params=1000, world_size=2)
    cfg.attention = AttentionConfig(mode="bidirectional")
    single = StepCost.of(cfg, num_params=1000, world_size=2)
    assert (block.tokens, single.tokens, block.world_size) == (4 * 32, 4 * 16, 2)
    assert block.peak_flops is None  # CPU
    assert single.flops / single.tokens > 6 * 1000  # parameters and attention, per token
