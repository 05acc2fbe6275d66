"""The sampler records, per generated token, the forward that committed it (``step_map``)."""

import torch

from megatron_diffusion.sampling.config import SamplerConfig
from megatron_diffusion.sampling.sampler import BlockSampler
from megatron_diffusion.distill.orders import check_step_map
from tests.sampling._helpers import EOS_ID, rules
from tests.sampling.test_decoding import EosAt, PlantedMistake


def test_fixed_steps_give_the_hand_computed_step_map():
    # 12 tokens, blocks of 4, 2 steps per block: 2 tokens per forward, blocks in order
    cfg = SamplerConfig(max_new_tokens=12, block_size=4, strategy="fixed", steps_per_block=2)
    out = BlockSampler(EosAt(), rules(), cfg).generate([[50, 1]])[0]
    assert out.num_forwards == 6
    for b in range(3):
        block = out.step_map[4 * b:4 * b + 4]
        assert sorted(block) == [2 * b, 2 * b, 2 * b + 1, 2 * b + 1]
        check_step_map(torch.tensor(block) - 2 * b)


def test_threshold_rows_of_different_lengths_count_their_own_forwards():
    cfg = SamplerConfig(max_new_tokens=12, block_size=4, strategy="threshold", threshold=0.9)
    out = BlockSampler(EosAt(unsure_before_eos=2), rules(), cfg).generate([[9, 1, 2], [30, 1]])
    # row 0: EOS at position 9 (generation index 6), positions 7, 8 unsure: block 1 commits the
    # sure EOS (and 10, cut) at forward 1, then 7 and 8 one per forward (equal scores: 7 first)
    assert out[0].tokens[-1] == EOS_ID and len(out[0].step_map) == len(out[0].tokens)
    assert out[0].step_map == [0, 0, 0, 0, 2, 3, 1]
    assert out[1].step_map == [0] * 4 + [1] * 4 + [2] * 4  # all sure: one forward per block
    assert [max(c.step_map) + 1 for c in out] == [c.num_forwards for c in out]


def test_a_corrected_token_carries_the_step_of_its_last_change():
    base = dict(max_new_tokens=4, block_size=4, strategy="fixed", steps_per_block=1)
    out = BlockSampler(PlantedMistake(5), rules(),
                       SamplerConfig(**base, self_correct=True)).generate([[1, 2, 3]])[0]
    assert out.tokens == [23, 24, 25, 26] and out.num_forwards == 3
    assert out.step_map == [0, 0, 1, 0]  # position 5 (index 2) replaced at the second forward
