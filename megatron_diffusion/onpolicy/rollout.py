"""Sampling and scoring trajectories, and their figures: what the on-policy run does before
its loss, shared with ``onpolicy-eval`` (the same figures on held-out prompts, no training).

``sample`` runs the block sampler on a model (eval mode for the call, no gradients); ``score``
asks the verifier (execution of a prompt's test on the decoded completion, or the completion's
likelihood under the reference model); ``sums`` gives the additive totals of a set of
trajectories (summed over data-parallel ranks by the trainer) and ``figures`` the means a
metrics line reports:

* ``tokens_per_forward``: completion tokens per sampler forward (the speed an on-policy run
  raises);
* ``steps_per_block``: forwards per block of the completion (``ceil(tokens / B)`` blocks);
* ``verifier``: the mean score (the pass rate with the execution verifier);
* ``reward`` and ``surrogate`` (``objective.reward``, ``objective.dense_surrogate``);
* ``completion_tokens``: mean completion length (its stop token included);
* ``distinct_tokens``: mean share of distinct ids in a completion (1: no id repeats). A fast
  sampler can be a degenerate one: repeating a confident token takes few steps, and a
  likelihood verifier may not mind; this is the figure that shows it.
"""

import torch

from megatron_diffusion.onpolicy.objective import dense_surrogate, reward
from megatron_diffusion.sampling.config import SamplerConfig
from megatron_diffusion.sampling.sampler import BlockSampler, Completion, ModelRules

SUMS = ("reward", "verifier", "surrogate", "forwards", "blocks", "tokens", "trajectories",
        "distinct")


def sample(model, rules: ModelRules, cfg: SamplerConfig, prompts: list[list[int]]) -> list[Completion]:
    """Completions of ``prompts`` (token ids) by ``model`` in eval mode (restored after)."""
    was_training = model.training
    model.eval()
    try:
        return BlockSampler(model, rules, cfg).generate(prompts)
    finally:
        model.train(was_training)


def completion_text(tokenizer, completion: Completion) -> str:
    return tokenizer.decode(completion.tokens[:-1] if completion.stopped_at_eos else completion.tokens)


def score(verifier, records: list, prompts: list[list[int]], completions: list[Completion],
          tokenizer) -> torch.Tensor:
    """``[N]`` float64 verifier scores. The model verifier reads the ids the sampler wrote
    (filled prompt, completion with its stop token); the execution verifier the decoded text
    after the record's own prompt."""
    if hasattr(verifier, "score_ids"):
        scores = [verifier.score_ids(p, c.tokens) for p, c in zip(prompts, completions)]
    else:
        scores = verifier.score_batch(records, [completion_text(tokenizer, c) for c in completions])
    return torch.tensor(scores, dtype=torch.float64)


def rewards(completions: list[Completion], scores: torch.Tensor, reward_cfg) -> torch.Tensor:
    return torch.tensor([reward(c.step_map, float(v), reward_cfg, num_steps=c.num_forwards)
                         for c, v in zip(completions, scores)], dtype=torch.float64)


def sums(completions: list[Completion], scores: torch.Tensor, rewards_N: torch.Tensor,
         block_size: int) -> torch.Tensor:
    """The ``SUMS`` totals of these trajectories (float64), additive over ranks."""
    surrogate = sum(dense_surrogate(c.step_map, c.num_forwards)[0] for c in completions)
    return torch.tensor([float(rewards_N.sum()), float(scores.sum()), surrogate,
                         sum(c.num_forwards for c in completions),
                         sum(-(-len(c.tokens) // block_size) for c in completions),
                         sum(len(c.tokens) for c in completions), len(completions),
                         sum(len(set(c.tokens)) / max(len(c.tokens), 1) for c in completions)],
                        dtype=torch.float64)


def figures(totals: torch.Tensor) -> dict:
    """The means of the module docstring from ``sums`` totals."""
    t = dict(zip(SUMS, totals.tolist()))
    n = max(t["trajectories"], 1.0)
    return {"reward": t["reward"] / n, "verifier": t["verifier"] / n,
            "surrogate": t["surrogate"] / n,
            "steps_per_block": t["forwards"] / max(t["blocks"], 1.0),
            "tokens_per_forward": t["tokens"] / max(t["forwards"], 1.0),
            "completion_tokens": t["tokens"] / n, "distinct_tokens": t["distinct"] / n}
