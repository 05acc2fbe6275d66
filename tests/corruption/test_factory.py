"""The run's corruption from a run config: the corruptor, the AR clean batcher, the ELBO's
config, the vocabulary edits may draw."""

import torch

from megatron_diffusion.config import RunConfig
from megatron_diffusion.corruption import factory
from megatron_diffusion.corruption.corruptor import Corruptor
from tests.corruption._helpers import clean_rows, gen


def _cfg(**sections) -> RunConfig:
    cfg = RunConfig()
    cfg.model.vocab_size, cfg.model.mask_token_id = 60, 1
    cfg.data.seq_len = 16
    for key, value in sections.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def test_random_token_ids_drop_the_special_ids_only():
    ids = factory.random_token_ids(8, {0, 5, 7})
    assert ids.tolist() == [1, 2, 3, 4, 6]


def test_ar_objective_gets_the_clean_row_with_loss_off_the_prompt():
    c = factory.make_corruptor(_cfg(loss__objective="ar"), vocab_size=60, special_ids={0, 1})
    assert isinstance(c, factory.CleanBatcher)
    x = clean_rows(2, 16)
    prompt = torch.zeros_like(x, dtype=torch.bool)
    prompt[:, :5] = True
    b = c.corrupt(x, torch.zeros_like(x), step=0, generator=gen(0), prompt_mask_BL=prompt)
    assert torch.equal(b.tokens_BS, x) and torch.equal(b.labels_BL, x)
    assert torch.equal(b.loss_weights_BL, (~prompt).float()) and b.stage == "mask"


def test_corruptor_mode_and_vocabulary_follow_the_run_config():
    cfg = _cfg(attention__mode="block", attention__block_size=4, training__train_iters=50)
    c = factory.make_corruptor(cfg, vocab_size=60, special_ids={0, 1, 2})
    assert isinstance(c, Corruptor) and c.mode == "block" and c.block_size == 4
    assert c.total_steps == 50 and c.seq_len == 16 and c.mask_token_id == 1
    assert c.random_token_ids.tolist() == list(range(3, 60))
    cfg = _cfg(attention__mode="bidirectional")
    assert factory.make_corruptor(cfg, vocab_size=60, special_ids={1}).mode == "single"


def test_eval_corruption_config_is_the_objective_and_leaves_the_run_alone():
    cfg = _cfg(corruption__warmup_steps=100, corruption__edit_stage_fraction=0.3)
    ev = factory.eval_corruption_config(cfg)
    assert (ev.corruption.warmup_steps, ev.corruption.edit_stage_fraction) == (0, 0.0)
    assert (cfg.corruption.warmup_steps, cfg.corruption.edit_stage_fraction) == (100, 0.3)
    c = factory.make_corruptor(ev, vocab_size=60, special_ids={1})
    assert c.u_max_at(0) == 1.0 and c.stage_at(cfg.training.train_iters - 1) == "mask"
