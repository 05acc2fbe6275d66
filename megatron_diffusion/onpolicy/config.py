"""The ``onpolicy`` section of a run config, and the run config that carries it.

A run config with ``training.step_source: onpolicy`` and an ``onpolicy:`` section is an
on-policy run (``train`` runs it with ``onpolicy.source.OnPolicySource``; docs/onpolicy.md). The
other sections mean what they mean in any run: ``model``/``attention`` the model (block mode,
from ``--init-from``), ``data`` the token store whose tokenizer encodes the prompts
(``data.seq_len``: the length of a loss row, at least the longest filled prompt plus
``max_new_tokens``; ``data.micro_batch_size``: loss rows per micro-batch),
``optimizer``/``training`` as always. ``OnPolicyRunConfig.validate`` checks the
section and what it needs of the others.
"""

from dataclasses import dataclass, field
from typing import Self

from megatron_diffusion.config import RunConfig
from megatron_diffusion.errors import UsageError, check_choice, check_int, check_range
from megatron_diffusion.onpolicy.objective import BASELINES, NORMALISE, RewardConfig
from megatron_diffusion.onpolicy.prompts import read_prompts
from megatron_diffusion.sampling.config import STRATEGIES, SamplerConfig

VERIFIERS = ("execution", "model")


@dataclass
class OnPolicyConfig:
    """The on-policy run: the prompt set, how trajectories are sampled and scored, and the weights
    of the reward and the KL anchor (docs/onpolicy.md)."""

    prompts: str | None = None
    """Prompt set (JSON lines, docs/onpolicy.md); required."""
    prompts_per_step: int = 4
    """Prompts per optimizer step, over all data-parallel ranks (a multiple of their number)."""
    group_size: int = 4
    """Trajectories sampled per prompt (the group of the per-prompt baseline, >= 2)."""
    max_new_tokens: int = 64
    """Generation length limit of a trajectory (a multiple of attention.block_size)."""
    strategy: str = "threshold"
    """The sampler's commit rule in a block (``fixed`` or ``threshold``), as at inference."""
    threshold: float = 0.9
    """``threshold``: confidence needed to commit a token."""
    steps_per_block: int | None = None
    """``fixed``: steps per block (None = one token per step)."""
    verifier: str = "execution"
    """``execution`` (every prompt needs a test) or ``model`` (likelihood under the frozen
    starting model)."""
    surrogate_weight: float = 1.0
    """Weight of the dense step surrogate in the reward (objective.RewardConfig)."""
    verifier_weight: float = 1.0
    """Weight of the verifier score in the reward."""
    normalise: str = "tokens"
    """Surrogate per completion token (``tokens``) or as eq. 11 has it (``none``)."""
    baseline: str = "leave_one_out"
    """Per-prompt baseline: ``leave_one_out`` (RLOO) or ``mean`` (GRPO)."""
    scale_advantages: bool = False
    """Divide advantages by the group's reward standard deviation (GRPO)."""
    commit_choice: bool = True
    """``log pi(tau)`` includes the probability that each position a step left masked stayed
    masked, under either rule (``choice.py``, ``loss.py``'s ``q`` term); false: the committed
    tokens only (ablation)."""
    kl_weight: float = 0.05
    """Weight of the KL anchor to the frozen starting model (0 = none, no reference copy)."""
    seed: int = 0
    """Seed of the trajectory sampling (with the step and the data-parallel rank)."""

    def validate(self) -> Self:
        if not isinstance(self.prompts, str) or not self.prompts:
            raise UsageError(f"prompts: got {self.prompts!r}, expected the path of a prompt set "
                             "(JSON lines)")
        try:  # a bad file fails with the config (in a multi-phase run, before any phase trains)
            read_prompts(self.prompts)
        except UsageError as e:
            raise UsageError(str(e) if str(e).startswith("prompts:") else f"prompts: {e}") from None
        check_int("prompts_per_step", self.prompts_per_step, lo=1)
        check_int("group_size", self.group_size, lo=2)
        check_int("max_new_tokens", self.max_new_tokens, lo=1)
        check_choice("strategy", self.strategy, STRATEGIES)
        check_range("threshold", self.threshold, 0, 1, lo_open=True)
        if self.steps_per_block is not None:
            check_int("steps_per_block", self.steps_per_block, lo=1)
        check_choice("verifier", self.verifier, VERIFIERS)
        check_choice("baseline", self.baseline, BASELINES)
        check_choice("normalise", self.normalise, NORMALISE)
        check_range("kl_weight", self.kl_weight, lo=0)
        check_int("seed", self.seed, lo=0)
        self.reward().validate()
        return self

    def reward(self) -> RewardConfig:
        return RewardConfig(self.surrogate_weight, self.verifier_weight, self.normalise)

    def sampler(self, *, block_size: int, seed: int = 0) -> SamplerConfig:
        """The sampling settings of a trajectory: this section's commit rule at temperature 1
        (REINFORCE needs tokens drawn from the policy), no self-correction (a trajectory's
        states are "revealed before its step"), the exact KV cache."""
        return SamplerConfig(max_new_tokens=self.max_new_tokens, block_size=block_size,
                             strategy=self.strategy, steps_per_block=self.steps_per_block,
                             threshold=self.threshold, temperature=1.0, seed=seed)


@dataclass
class OnPolicyRunConfig(RunConfig):
    """A run config with an ``onpolicy`` section: ``train`` runs it with ``OnPolicyTrainer``."""

    onpolicy: OnPolicyConfig = field(default_factory=OnPolicyConfig)

    def validate(self) -> Self:
        super().validate()
        if self.training.step_source != "onpolicy":
            raise UsageError(f"training.step_source: the onpolicy section is read by the "
                             f"'onpolicy' source, got {self.training.step_source!r}")
        attn, par, B = self.attention, self.parallel, self.attention.block_size
        if attn.mode != "block":
            raise UsageError(f"attention.mode: an on-policy run trains a block-diffusion model, "
                             f"got {attn.mode!r}")
        if self.onpolicy.max_new_tokens % B:
            raise UsageError(f"onpolicy.max_new_tokens: got {self.onpolicy.max_new_tokens}, "
                             f"expected a multiple of attention.block_size={B}")
        if par.sequence_parallel:
            raise UsageError("parallel.sequence_parallel: the on-policy sampler feeds chunks of "
                             "any width, which sequence parallelism cannot split; set it false")
        for name in ("pipeline_model_parallel_size", "context_parallel_size"):
            if getattr(par, name) != 1:
                raise UsageError(f"parallel.{name}: got {getattr(par, name)}, expected 1 (on-policy"
                                 " generation runs the whole model on each tensor-parallel group)")
        if self.model.attention_backend == "flex":
            raise UsageError("model.attention_backend: the on-policy sampler needs 'sdpa' or 'te', "
                             "got 'flex'")
        if self.onpolicy.verifier == "model" and attn.visibility != "shared":
            raise UsageError("onpolicy.verifier: 'model' scores with the shared-visibility rows of"
                             f" the reference, got attention.visibility={attn.visibility!r}")
        if self.onpolicy.verifier == "model" and par.tensor_model_parallel_size != 1:
            raise UsageError("onpolicy.verifier: 'model' reads full-vocabulary logits on one rank;"
                             " use tensor_model_parallel_size=1 or the execution verifier")
        return self

    def run_config_dict(self) -> dict:
        """The sections every checkpoint reader knows (``config_from_dict``), without ``onpolicy``."""
        d = self.to_dict()
        d.pop("onpolicy")
        return d

