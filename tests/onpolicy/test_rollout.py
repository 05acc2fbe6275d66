"""The figures of a set of trajectories (onpolicy/rollout.py), by hand."""

import pytest
import torch

from megatron_diffusion.onpolicy import rollout
from megatron_diffusion.onpolicy.objective import RewardConfig
from megatron_diffusion.onpolicy.prompts import PromptRecord
from megatron_diffusion.sampling.sampler import Completion


def _completion(tokens, step_map, forwards, eos=False):
    return Completion(tokens=tokens, num_forwards=forwards, seconds=0.0, stopped_at_eos=eos,
                      step_map=step_map)


def test_sums_and_figures_by_hand():
    # B = 4. A: 6 tokens in 3 forwards (2 blocks), steps [0,0,1,1 | 2,2]: two tokens per step,
    # surrogate -3/2. B: 4 tokens in 4 forwards (1 block), one per step: -4.
    a = _completion([1, 2, 3, 4, 5, 6], [0, 0, 1, 1, 2, 2], 3)
    b = _completion([7, 7, 7, 0], [0, 1, 2, 3], 4, eos=True)  # a repeating one
    scores = torch.tensor([1.0, 0.0], dtype=torch.float64)
    rewards = rollout.rewards([a, b], scores, RewardConfig())
    assert rewards.tolist() == pytest.approx([-1.5 / 6 + 1.0, -4 / 4 + 0.0])
    totals = rollout.sums([a, b], scores, rewards, block_size=4)
    fig = rollout.figures(totals)
    assert fig["tokens_per_forward"] == pytest.approx(10 / 7)
    assert fig["steps_per_block"] == pytest.approx(7 / 3)
    assert fig["verifier"] == pytest.approx(0.5) and fig["completion_tokens"] == pytest.approx(5)
    assert fig["surrogate"] == pytest.approx((-1.5 - 4) / 2)
    assert fig["distinct_tokens"] == pytest.approx((6 / 6 + 2 / 4) / 2)
    # additive: the figures of two halves summed are those of the whole
    halves = rollout.sums([a], scores[:1], rewards[:1], 4) + rollout.sums([b], scores[1:], rewards[1:], 4)
    assert torch.equal(halves, totals)


class _ByIds:
    def score_ids(self, prompt_ids, completion_ids):
        return len(completion_ids) / 10


class _ByText:
    def score_batch(self, records, texts):
        return [float(t == r.prompt) for r, t in zip(records, texts)]


class _Tok:
    def decode(self, ids):
        return "".join(map(str, ids))


def test_score_reads_ids_or_text_without_the_stop_token():
    done = [_completion([1, 2, 9], [0, 0, 1], 2, eos=True), _completion([1, 2], [0, 1], 2)]
    assert rollout.score(_ByIds(), [], [[5], [5]], done, _Tok()).tolist() == [0.3, 0.2]
    records = [PromptRecord("12", "a"), PromptRecord("12", "b")]
    assert rollout.score(_ByText(), records, [[5], [5]], done, _Tok()).tolist() == [1.0, 1.0]
