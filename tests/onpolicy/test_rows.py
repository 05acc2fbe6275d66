"""Policy rows (onpolicy/rows.py): a hand-made trajectory's rows, and the exactness that makes
REINFORCE's log-probabilities the sampler's: on a greedy trajectory of a tiny checkpoint, the
committed tokens are the argmax of the training forward over the rows (with and without the
logit shift)."""

import pytest
import torch

from megatron_diffusion.loading.trained import load_model
from megatron_diffusion.data.tokenizer import load_tokenizer
from megatron_diffusion.errors import UsageError
from megatron_diffusion.model.inputs import forward_kwargs
from megatron_diffusion.onpolicy.loss import committed
from megatron_diffusion.onpolicy.rows import (Trajectory, fill_prompt, micro_batches, policy_rows,
                                              rounds)
from megatron_diffusion.sampling.config import SamplerConfig
from megatron_diffusion.sampling.sampler import BlockSampler, ModelRules
from megatron_diffusion.training.checkpoint import latest_checkpoint
from megatron_diffusion.training.forward_backward import ForwardSpec
from tests.helpers import make_checkpoint

M, PAD = 99, 98


def test_hand_made_trajectory():
    # B = 2; prompt [5, 6]; completion [7, 8 | 9] with steps [1, 0 | 2]: block 0 took two
    # steps (8 first, then 7), block 1 one step (9; its second position is after the stop)
    traj = Trajectory([5, 6], [7, 8, 9], [1, 0, 2], advantage=-0.5)
    assert rounds(traj.step_map, 2) == [[0, 1], [2]]
    pr = policy_rows(traj, block_size=2, seq_len=8, mask_id=M, pad_id=PAD)
    rows = pr.batch
    x0 = [5, 6, 7, 8, 9, PAD, PAD, PAD]
    assert rows.tokens_BS.tolist() == [[5, 6, M, M, M, M, PAD, PAD] + x0,
                                       [5, 6, M, 8, 9, PAD, PAD, PAD] + x0]
    assert rows.labels_BL.tolist() == [x0, x0]
    assert rows.loss_mask_BL.int().tolist() == [[0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0]]
    # row 0 left position 2 open (7 was drawn and not kept); the stop block's tail is not open
    assert pr.open_BL.int().tolist() == [[0, 0, 1, 0, 0, 0, 0, 0], [0] * 8]
    assert rows.loss_weights_BL.tolist() == ((rows.loss_mask_BL | pr.open_BL).float() * -0.5).tolist()
    assert rows.loss_mask_BL.sum() == len(traj.tokens)  # every token in exactly one row


def test_fill_and_bad_input():
    assert fill_prompt([1, 2, 3], 4, 0) == [0, 1, 2, 3]
    assert fill_prompt([1, 2, 3, 4], 4, 0) == [1, 2, 3, 4]
    with pytest.raises(UsageError, match="prompt_ids: 3 tokens"):
        policy_rows(Trajectory([1, 2, 3], [4], [0]), block_size=2, seq_len=8, mask_id=M, pad_id=PAD)
    with pytest.raises(UsageError, match="data.seq_len: a row of 4"):
        policy_rows(Trajectory([1, 2], [4, 5, 6], [0, 0, 1]), block_size=2, seq_len=4, mask_id=M,
                    pad_id=PAD)
    with pytest.raises(UsageError, match="step_map"):
        policy_rows(Trajectory([1, 2], [4, 5], [0]), block_size=2, seq_len=8, mask_id=M, pad_id=PAD)


def test_micro_batches_pad_to_the_count():
    rows = policy_rows(Trajectory([5, 6], [7, 8, 9], [1, 0, 2]), block_size=2, seq_len=8,
                       mask_id=M, pad_id=PAD)
    mbs = micro_batches([rows], 3, 2, seq_len=8, pad_id=PAD)
    assert [mb.batch_size for mb in mbs] == [3, 3]
    assert int(sum(mb.batch.loss_mask_BL.sum() for mb in mbs)) == 3
    assert torch.equal(mbs[0].open_BL[:2], rows.open_BL) and not mbs[0].open_BL[2:].any()
    assert mbs[1].batch.loss_mask_BL.sum() == 0 and (mbs[1].batch.tokens_BS == PAD).all()
    with pytest.raises(ValueError):
        micro_batches([rows], 1, 1, seq_len=8, pad_id=PAD)


@pytest.fixture(scope="module", params=[False, True], ids=["no_shift", "logit_shift"])
def tiny(request, tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt")
    make_checkpoint(run, logit_shift=request.param)
    loaded = load_model(latest_checkpoint(run))
    return loaded, load_tokenizer(loaded.tokenizer_path)


def _greedy(loaded, tok, prompts):
    rules = ModelRules.from_run_config(loaded.config, eos_id=tok.eos_id, pad_id=tok.pad_id)
    cfg = SamplerConfig(max_new_tokens=12, strategy="fixed", steps_per_block=2, temperature=0.0,
                        ignore_eos=True).validate()
    return BlockSampler(loaded.model, rules, cfg).generate(prompts)


def _argmax_agrees(loaded, tok, prompt, completion) -> bool:
    cfg = loaded.config
    rows = policy_rows(Trajectory(prompt, completion.tokens, completion.step_map),
                       block_size=cfg.attention.block_size, seq_len=32,
                       mask_id=cfg.model.mask_token_id, pad_id=tok.pad_id).batch
    spec = ForwardSpec.of(cfg)
    with torch.no_grad():
        out = loaded.model(**forward_kwargs(rows, spec.attention, spec.backend))
    logits_KV, targets_K, _ = committed(out, rows, spec)
    # the rows list committed tokens in position order within each row
    return torch.equal(logits_KV.argmax(-1), targets_K)


def test_greedy_tokens_are_the_argmax_of_their_rows(tiny):
    loaded, tok = tiny
    B = loaded.config.attention.block_size
    texts = ["import json\n", "def load(fp):\n    return"]
    filled = [fill_prompt(tok.encode(t), B, tok.eos_id) for t in texts]
    for prompt, completion in zip(filled, _greedy(loaded, tok, filled)):
        assert len(set(completion.step_map)) < len(completion.tokens)  # parallel steps
        assert _argmax_agrees(loaded, tok, prompt, completion)

