"""Commit rules and chunk masks on hand-computed examples (no model)."""

import torch

from megatron_diffusion.sampling import strategies
from megatron_diffusion.sampling.masks import ChunkAttention, chunk_mask, clean_block_ids

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


def allowed(mode, pad, in_start, in_end, block_start, width, key_len, seq_end=7, P=3, C=9):
    pad = torch.tensor(pad)
    rows = lambda v: torch.tensor(v) if isinstance(v, list) else torch.full_like(pad, v)
    mask = chunk_mask(ChunkAttention.for_model(mode, "block_causal"), pad,
                      clean_block_ids(pad, P, C, 2), in_start_B=rows(in_start),
                      in_end_B=rows(in_end), block_start_B=rows(block_start), width=width,
                      key_len=key_len, seq_end=seq_end)
    return (~mask[:, 0]).int().tolist()


def test_chunk_mask_block_model_by_hand():
    # row 0: 1 pad + 2 prompt tokens, row 1: 3 prompt tokens; P = 3, B = 2, first block [3, 5)
    got = allowed("block", [1, 0], 0, 5, 3, width=5, key_len=5)
    assert got[0] == [[1, 0, 0, 0, 0],   # pad query: itself only
                      [0, 1, 1, 0, 0],   # prompt block: bidirectional
                      [0, 1, 1, 0, 0],
                      [0, 1, 1, 1, 1],   # noisy block: clean + whole block
                      [0, 1, 1, 1, 1]]
    assert got[1] == [[1, 1, 0, 0, 0],   # prompt blocks [0, 1] [2]
                      [1, 1, 0, 0, 0],
                      [1, 1, 1, 0, 0],
                      [1, 1, 1, 1, 1],
                      [1, 1, 1, 1, 1]]
    # with 3 cached columns only the block's queries are fed
    cached = allowed("block", [1, 0], 3, 5, 3, width=2, key_len=5)
    assert cached == [rows[3:] for rows in got]


def test_chunk_mask_rows_at_different_blocks():
    # row 0 feeds its finished block [3, 5) + its next block [5, 7); row 1 only block [3, 5):
    # its chunk is shorter, the filler queries attend themselves, its keys stop at column 5
    got = allowed("block", [1, 0], 3, [7, 5], [5, 3], width=4, key_len=7)
    assert got[0] == [[0, 1, 1, 1, 1, 0, 0],
                      [0, 1, 1, 1, 1, 0, 0],
                      [0, 1, 1, 1, 1, 1, 1],
                      [0, 1, 1, 1, 1, 1, 1]]
    assert got[1] == [[1, 1, 1, 1, 1, 0, 0],
                      [1, 1, 1, 1, 1, 0, 0],
                      [0, 0, 0, 0, 0, 1, 0],
                      [0, 0, 0, 0, 0, 0, 1]]


def test_chunk_mask_causal_bidirectional_and_right_padding_by_hand():
    causal = allowed("causal", [1], 0, 5, 3, width=5, key_len=5)[0]
    assert causal == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 0, 0],
                      [0, 1, 1, 1, 0], [0, 1, 1, 1, 1]]
    # full-sequence model, generation [3, 6) and one column of right padding (seq_end = 6)
    bidir = allowed("bidirectional", [1], 0, 7, 3, width=7, key_len=7, seq_end=6)[0]
    assert bidir == ([[1, 0, 0, 0, 0, 0, 0]] + [[0, 1, 1, 1, 1, 1, 0]] * 5
                     + [[0, 0, 0, 0, 0, 0, 1]])


def test_heldout_accuracy_against_the_true_continuation():
    from megatron_diffusion.sampling.bench import heldout_accuracy

    assert heldout_accuracy([1, 2, 3, 4], [1, 2, 9, 4]) == 0.75
    assert heldout_accuracy([1, 2], [1, 2, 3, 4]) == 0.5  # stopping early counts as misses
    assert heldout_accuracy([5, 6, 7], [1, 2, 3]) == 0.0
