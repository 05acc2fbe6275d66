"""Decoding behaviour on stub models whose logits the test controls (fast, no megatron)."""

import torch

from megatron_diffusion.sampling.config import SamplerConfig
from megatron_diffusion.sampling.sampler import BlockSampler
from tests.helpers import MASK_ID
from tests.sampling._helpers import EOS_ID, rules

V = 61
SURE, UNSURE = 30.0, 0.0


def one_hot_logits(tokens_BS: torch.Tensor, strength_BS: torch.Tensor) -> torch.Tensor:
    logits = torch.zeros(*tokens_BS.shape, V)
    logits.scatter_(-1, tokens_BS[..., None], strength_BS[..., None].float())
    logits[..., MASK_ID] = float("-inf")
    return logits


def first_prompt_token(input_ids, position_ids):
    """The row's key: its first real token (the last column at position 0; pads are at 0 too)."""
    col = (position_ids == 0).int().cumsum(dim=1).argmax(dim=1)
    return input_ids[torch.arange(input_ids.shape[0]), col]


class EosAt:
    """Predicts token ``10 + position % 40`` surely, and EOS at position == the row's key."""

    def __init__(self, unsure_before_eos=0):
        self.unsure_before_eos = unsure_before_eos

    def __call__(self, input_ids, position_ids, attention_mask):
        key_B1 = first_prompt_token(input_ids, position_ids)[:, None]
        tokens = torch.where(position_ids == key_B1, EOS_ID, 10 + position_ids % 40)
        strength = torch.full(tokens.shape, SURE)
        near = (position_ids < key_B1) & (position_ids >= key_B1 - self.unsure_before_eos)
        strength[near] = 2.0  # below any threshold: committed one at a time, after the EOS
        return one_hot_logits(tokens, strength)


def test_eos_stops_rows_at_variable_lengths_and_trims():
    # keys (first prompt token) 9, 6 and 30: EOS at those positions
    batch = [[9, 1, 2], [6, 1, 2, 3, 4], [30, 1]]
    cfg = SamplerConfig(max_new_tokens=12, block_size=4, strategy="threshold", threshold=0.9)
    out = BlockSampler(EosAt(), rules(), cfg).generate(batch)
    assert out[0].tokens == [13, 14, 15, 16, 17, 18, EOS_ID] and out[0].stopped_at_eos
    assert out[1].tokens == [15, EOS_ID] and out[1].stopped_at_eos
    assert out[2].tokens == [10 + p for p in range(2, 14)] and not out[2].stopped_at_eos
    # everything sure: one forward per block the row needed
    assert [c.num_forwards for c in out] == [2, 1, 3]
    solo = [BlockSampler(EosAt(), rules(), cfg).generate([p])[0].tokens for p in batch]
    assert solo == [c.tokens for c in out]


def test_any_stop_token_ends_the_row():
    """Several stop ids (an Instruct model's <|im_end|> and <|endoftext|>): the first one
    committed ends the row and the output is cut after it."""
    import dataclasses

    cfg = SamplerConfig(max_new_tokens=12, block_size=4, strategy="threshold", threshold=0.9)
    second = 10 + 5  # EosAt predicts 10 + position % 40: id 15 comes at position 5
    stops = dataclasses.replace(rules(), stop_ids=(EOS_ID, second))
    out = BlockSampler(EosAt(), stops, cfg).generate([[9, 1, 2], [30, 1]])
    assert out[0].tokens == [13, 14, second] and out[0].stopped_at_eos
    assert out[1].tokens == [12, 13, 14, second] and out[1].stopped_at_eos
    assert BlockSampler(EosAt(), rules(), cfg).generate([[30, 1]])[0].tokens == [
        10 + p for p in range(2, 14)]  # EOS alone does not stop it
    ignore = dataclasses.replace(cfg, ignore_eos=True)  # --ignore-eos: no stop token at all
    assert len(BlockSampler(EosAt(), stops, ignore).generate([[9, 1, 2]])[0].tokens) == 12


def test_eos_waits_for_every_earlier_position():
    # EOS at position 7 is committed first; positions 5, 6 are unsure and come one per step
    cfg = SamplerConfig(max_new_tokens=8, block_size=8, strategy="threshold", threshold=0.9)
    out = BlockSampler(EosAt(unsure_before_eos=2), rules(), cfg).generate([[7, 1, 2]])[0]
    assert out.tokens == [13, 14, 15, 16, EOS_ID]
    assert MASK_ID not in out.tokens and out.num_forwards == 3


def test_fixed_strategy_spends_its_steps():
    cfg = SamplerConfig(max_new_tokens=12, block_size=4, strategy="fixed", steps_per_block=3)
    out = BlockSampler(EosAt(), rules(), cfg).generate([[50, 1]])[0]
    assert out.num_forwards == 9 and len(out.tokens) == 12  # 3 blocks x 3 steps (2 + 1 + 1)


class PlantedMistake:
    """First forward: position ``wrong_at`` predicts a wrong token with strength ``wrong``
    (``SURE``: p ~ 1; 3.0: p = e^3 / (e^3 + 60) ~ 0.25); afterwards every position confidently
    predicts the right one (``20 + position``). ``wrong_at=None``: never wrong."""

    def __init__(self, wrong_at, wrong=3.0):
        self.wrong_at, self.wrong, self.calls = wrong_at, wrong, 0

    def __call__(self, input_ids, position_ids, attention_mask):
        tokens = 20 + position_ids
        strength = torch.full(tokens.shape, SURE)
        if self.calls == 0 and self.wrong_at is not None:
            tokens = torch.where(position_ids == self.wrong_at, 3, tokens)
            strength[position_ids == self.wrong_at] = self.wrong
        self.calls += 1
        return one_hot_logits(tokens, strength)


def test_self_correction_fixes_a_planted_token():
    base = dict(max_new_tokens=4, block_size=4, strategy="fixed", steps_per_block=1)
    plain = BlockSampler(PlantedMistake(5), rules(), SamplerConfig(**base)).generate([[1, 2, 3]])[0]
    assert plain.tokens == [23, 24, 3, 26] and plain.num_forwards == 1
    fixed = BlockSampler(PlantedMistake(5), rules(),
                         SamplerConfig(**base, self_correct=True)).generate([[1, 2, 3]])[0]
    # commit all (the planted token at p ~ 0.25 < revisit_threshold), correct it, verify
    assert fixed.tokens == [23, 24, 25, 26] and fixed.num_forwards == 3


def test_self_correction_costs_no_forward_when_it_cannot_fire():
    """Every token committed at p ~ 1: no settling forward, the same forwards as without
    self-correction (was one extra per block: 8 instead of 4 here)."""
    base = dict(max_new_tokens=16, block_size=4, strategy="threshold", threshold=0.9)
    plain = BlockSampler(PlantedMistake(None), rules(), SamplerConfig(**base)).generate([[1, 2]])
    sc = BlockSampler(PlantedMistake(None), rules(),
                      SamplerConfig(**base, self_correct=True)).generate([[1, 2]])
    assert plain[0].num_forwards == sc[0].num_forwards == 4
    assert plain[0].tokens == sc[0].tokens
    # a confident mistake is then kept: the revisit threshold trades it for the forward
    kept = BlockSampler(PlantedMistake(3, wrong=SURE), rules(),
                        SamplerConfig(**base, self_correct=True)).generate([[1, 2]])[0]
    assert kept.tokens[1] == 3 and kept.num_forwards == 4
    # the knob: a planted token at p ~ 0.25 is revisited (and fixed) under the default 0.9,
    # trusted under 0.2
    one_step = dict(base, strategy="fixed", steps_per_block=1, self_correct=True)
    for revisit, tokens, forwards in ((0.9, 23, 6), (0.2, 3, 4)):
        out = BlockSampler(PlantedMistake(3), rules(), SamplerConfig(
            **one_step, revisit_threshold=revisit)).generate([[1, 2]])[0]
        assert (out.tokens[1], out.num_forwards) == (tokens, forwards), revisit


class NeverSatisfied:
    """Committed tokens are always 'wrong': the top-1 is the input token + 1, surely; [MASK]
    positions propose 10 unsurely (p ~ 0.11, below the revisit threshold)."""

    def __call__(self, input_ids, position_ids, attention_mask):
        masked = input_ids == MASK_ID
        tokens = torch.where(masked, 10, (input_ids + 1) % 50)
        return one_hot_logits(tokens, torch.where(masked, 2.0, SURE))


def test_self_correction_terminates_within_its_budget():
    cfg = SamplerConfig(max_new_tokens=8, block_size=4, strategy="fixed", steps_per_block=1,
                        self_correct=True, max_corrections_per_block=3)
    out = BlockSampler(NeverSatisfied(), rules(), cfg).generate([[1, 2], [3, 4, 5]])
    # per block: 1 commit step + 3 corrections + 1 step that may not correct = 5 forwards
    assert [c.num_forwards for c in out] == [10, 10]
    assert all(len(c.tokens) == 8 for c in out)


class Uniform:
    def __call__(self, input_ids, position_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, V)
        logits[..., 50:] = float("-inf")
        return logits


def test_temperature_sampling_is_seeded():
    def run(seed):
        cfg = SamplerConfig(max_new_tokens=16, block_size=4, strategy="fixed", temperature=1.0,
                            seed=seed)
        return [c.tokens for c in BlockSampler(Uniform(), rules(), cfg).generate([[1], [2, 3]])]

    assert run(3) == run(3) and run(3) != run(4)
    assert all(t < 50 for row in run(3) for t in row)


class NextTokenStub:
    """A logit-shift model: output ``i`` surely predicts the token at ``i + 1``, ``10 + (i+1) % 40``."""

    def __call__(self, input_ids, position_ids, attention_mask):
        return one_hot_logits(10 + (position_ids + 1) % 40, torch.full(input_ids.shape, SURE))


def test_logit_shift_reads_the_previous_output():
    for mode, block_size in (("causal", 1), ("causal", 4), ("bidirectional", None),
                             ("block", 4), ("block", 1)):
        cfg = SamplerConfig(max_new_tokens=6, block_size=block_size, strategy="fixed")
        out = BlockSampler(NextTokenStub(), rules(mode=mode, logit_shift=True), cfg).generate(
            [[3, 4, 5], [7]])
        assert out[0].tokens == [10 + p for p in range(3, 9)], mode
        assert out[1].tokens == [10 + p for p in range(1, 7)], mode
