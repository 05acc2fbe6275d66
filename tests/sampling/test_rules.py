"""Commit rules and chunk masks on hand-computed examples (no model)."""

import torch

from megatron_diffusion.sampling import strategies
from megatron_diffusion.sampling.masks import MaskRules, chunk_mask, clean_block_ids

T_, F_ = True, False


def test_fixed_commits_ceil_remaining_over_steps_left():
    masked = torch.tensor([[T_, T_, F_, T_], [T_, T_, T_, T_]])
    conf = torch.tensor([[0.1, 0.5, 0.9, 0.3], [0.4, 0.4, 0.2, 0.1]])
    commit = strategies.select_fixed(masked, conf, steps_left=2)
    # row 0: 3 masked, ceil(3/2) = 2 -> positions 1 (0.5) and 3 (0.3); the unmasked 0.9 is not
    # row 1: 4 masked -> 2; the tie 0.4/0.4 keeps both
    assert commit.tolist() == [[F_, T_, F_, T_], [T_, T_, F_, F_]]
    assert strategies.select_fixed(masked, conf, steps_left=1).tolist() == masked.tolist()
    assert strategies.select_fixed(masked, conf, steps_left=0).tolist() == masked.tolist()


def test_threshold_commits_confident_and_at_least_one():
    masked = torch.tensor([[T_, T_, F_, T_], [T_, T_, F_, F_], [F_, F_, F_, F_]])
    conf = torch.tensor([[0.95, 0.2, 0.99, 0.91], [0.3, 0.6, 0.99, 0.2], [0.9, 0.9, 0.9, 0.9]])
    commit = strategies.select_threshold(masked, conf, threshold=0.9)
    assert commit.tolist() == [[T_, F_, F_, T_], [F_, T_, F_, F_], [F_, F_, F_, F_]]


def test_correction_replaces_the_most_confident_disagreement_once():
    committed = torch.tensor([[T_, T_, T_, F_], [T_, T_, F_, F_], [T_, F_, F_, F_]])
    current = torch.tensor([[5, 6, 7, 9], [5, 6, 9, 9], [5, 9, 9, 9]])
    top1 = torch.tensor([[5, 1, 2, 3], [1, 6, 3, 3], [4, 3, 3, 3]])
    prob = torch.tensor([[0.99, 0.92, 0.97, 1.0], [0.5, 0.99, 1.0, 1.0], [0.95, 1.0, 1.0, 1.0]])
    fix = strategies.select_correction(committed, current, top1, prob, threshold=0.9,
                                       allowed_B=torch.tensor([T_, T_, F_]))
    # row 0: positions 1 and 2 disagree above 0.9 -> only the more confident (2); row 1: the
    # disagreement is below threshold; row 2: out of budget
    assert fix.tolist() == [[F_, F_, T_, F_], [F_, F_, F_, F_], [F_, F_, F_, F_]]


def test_propose_greedy_and_seeded_sampling():
    logits = torch.log(torch.tensor([[[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]]]))
    tokens, conf, top1, _ = strategies.propose(logits, 0.0, None)
    assert tokens.tolist() == [[1, 0]] and torch.allclose(conf, torch.tensor([[0.7, 0.5]]))
    draws = [strategies.propose(logits.expand(64, 2, 3), 1.0,
                                torch.Generator().manual_seed(s))[0] for s in (7, 7, 8)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    sampled, sampled_conf, _, _ = strategies.propose(logits.expand(64, 2, 3), 1.0,
                                                     torch.Generator().manual_seed(7))
    # confidence is the untempered probability of the sampled token, whatever was drawn
    probs = torch.softmax(logits, dim=-1)[0]  # [2, 3]
    expected = probs[torch.arange(2), sampled]  # [64, 2]
    assert torch.allclose(sampled_conf, expected)
    assert sampled[:, 0].unique().numel() > 1  # it did sample


def test_clean_block_ids_align_to_prompt_start_and_generation_start():
    # row 0: 1 pad + 2 prompt tokens; row 1: 3 prompt tokens; P = 3, 4 generated, B = 2
    ids = clean_block_ids(torch.tensor([1, 0]), prompt_columns=3, total_columns=7, block_size=2)
    assert ids.tolist() == [[-1, 0, 0, 1, 1, 2, 2], [0, 0, 1, 2, 2, 3, 3]]


def test_chunk_mask_block_model_by_hand():
    pad = torch.tensor([1, 0])
    blocks = clean_block_ids(pad, 3, 7, 2)
    allowed = ~chunk_mask(MaskRules.for_model("block", "block_causal"), pad, blocks, start=0,
                          block_start=3, end=5)[:, 0]
    assert allowed[0].int().tolist() == [[1, 0, 0, 0, 0],   # pad query: itself only
                                         [0, 1, 1, 0, 0],   # prompt block: bidirectional
                                         [0, 1, 1, 0, 0],
                                         [0, 1, 1, 1, 1],   # noisy block: clean + whole block
                                         [0, 1, 1, 1, 1]]
    assert allowed[1].int().tolist() == [[1, 1, 0, 0, 0],   # prompt blocks [0,1] [2]
                                         [1, 1, 0, 0, 0],
                                         [1, 1, 1, 0, 0],
                                         [1, 1, 1, 1, 1],
                                         [1, 1, 1, 1, 1]]
    # with a cache of 3 columns only the block's queries are fed
    cached = ~chunk_mask(MaskRules.for_model("block", "block_causal"), pad, blocks, start=3,
                         block_start=3, end=5)[:, 0]
    assert torch.equal(cached, allowed[:, 3:])


def test_chunk_mask_causal_and_bidirectional_by_hand():
    pad = torch.tensor([1])
    blocks = clean_block_ids(pad, 3, 7, 2)
    causal = ~chunk_mask(MaskRules.for_model("causal", "block_causal"), pad, blocks, start=0,
                         block_start=3, end=5)[0, 0]
    assert causal.int().tolist() == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 0, 0],
                                     [0, 1, 1, 1, 0], [0, 1, 1, 1, 1]]
    bidir = ~chunk_mask(MaskRules.for_model("bidirectional", "block_causal"), pad, blocks,
                        start=0, block_start=3, end=7)[0, 0]
    assert bidir.int().tolist() == [[1, 0, 0, 0, 0, 0, 0]] + [[0, 1, 1, 1, 1, 1, 1]] * 6
