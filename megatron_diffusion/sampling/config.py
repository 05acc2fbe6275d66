"""``SamplerConfig``: every decoding setting of the block sampler (docs/method.md 8).

Defaults that depend on the checkpoint (the block size) are resolved by ``resolve`` from the
model's training ``AttentionConfig``, so ``settings`` always records what was in effect.

Validated once, where a config is made from input: ``loading.trained.load_sampler`` (before
the weights load), ``DiffusionSampler.with_settings``, or whoever builds a ``BlockSampler`` by
hand. The sampler trusts what it is given; ``resolve`` adds only the checks that need the model.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Self

from megatron_diffusion.errors import UsageError, check_choice, check_int, check_range

STRATEGIES = ("fixed", "threshold", "speculative")
BIDIRECTIONAL_CONTEXTS = ("prefix", "full")


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


@dataclass
class SamplerConfig:
    """Every decoding setting of the block-wise sampler: length, block size, commit rule and its
    thresholds, temperature, seed, speculation (docs/sampling.md)."""

    max_new_tokens: int = 256
    """Most tokens generated after the prompt (decoding stops earlier at a stop token)."""
    block_size: int | None = None
    """Inference block size ``B`` (any value, independent of training). None: the training block
    size for a block-mode model, 1 for a causal one, ``max_new_tokens`` (one block, full-sequence
    diffusion) for a bidirectional one."""
    strategy: str = "threshold"
    """Commit rule inside a block: ``fixed`` (``steps_per_block`` steps, ``ceil(masked left /
    steps left)`` tokens each) or ``threshold`` (every masked position whose probability is at
    least ``threshold``, at least the most confident one per step; Fast-dLLM). ``speculative``:
    not a block rule but lossless self-speculative decoding (``sampling/speculative.py``): the
    clean stream verifies ``draft_len`` tokens drafted by a [MASK] block, so the output is the
    AR decode's (greedy) or follows its distribution (``temperature > 0``)."""
    draft_len: int | None = None
    """``speculative``: draft tokens verified per forward (1-16); None = the training block size
    minus 1 (a draft block of ``draft_len + 1`` [MASK], its first token the AR prediction)."""
    steps_per_block: int | None = None
    """``fixed``: denoising steps per block; None = ``block_size`` (one token per step)."""
    threshold: float = 0.9
    """``threshold``: confidence (probability of the proposed token) needed to commit; in (0, 1]."""
    temperature: float = 0.0
    """0: greedy argmax. > 0: proposals sampled from ``softmax(logits / temperature)``."""
    seed: int = 0
    """Seed of the ``torch.Generator`` used when ``temperature > 0``."""
    self_correct: bool = False
    """Re-score committed tokens of the current block and replace one per step when the model's
    top-1 disagrees with probability >= ``correction_threshold`` (edit-trained models)."""
    correction_threshold: float = 0.9
    """Probability the model's top-1 needs to overwrite a committed token; in (0, 1]."""
    revisit_threshold: float = 0.9
    """Self-correction: after the step that fills the block, the settling forward (which checks
    the filled block once more) runs only if some token of the block has probability below this
    under that step's forward (or the step corrected a token); otherwise the block is final at
    once. In (0, 1]; 1 settles unless every token is certain to float precision."""
    max_corrections_per_block: int | None = None
    """Upper bound on replacements per row and block (termination); None = ``block_size``."""
    revisit_window: int = 0
    """Self-correction reaching back into the previous, finished block: its last
    ``revisit_window`` positions (at most ``block_size``) are re-read with every step of the
    current block (fed again as noisy copies next to it) and corrected, and count for the
    settling rule, like the block's own committed tokens; a change there recomputes that block's
    cache entries in the next forward. 0 (default): only the current block. Block-mode models
    without logit shift."""
    kv_cache: bool = True
    """Cache keys/values of the prompt and finished blocks (exact for block-causal models); False
    recomputes the whole sequence every step (reference path, same tokens)."""
    bidirectional_context: str = "prefix"
    """Bidirectional (full-sequence) models only. ``prefix`` (Seed Diffusion 3.4): each step
    feeds the prompt, the finished blocks and the current block, never a future position; with
    ``kv_cache`` the prompt's and each finished block's keys/values are cached when final
    (approximate by construction: computed without the later blocks, which such a model saw in
    training), without it they are recomputed every step (the exact ``p(x_Bk | x_<k)``).
    ``full`` (LLaDA's semi-AR order): every step feeds the whole generation, future blocks as
    [MASK]; no cache."""
    ar_baseline: bool = False
    """Decode one token per forward (block size 1, fixed, one step) with the KV cache: the AR
    baseline of the same model."""
    stop_tokens: tuple = ()
    """Tokens that end a row (``--stop-token``, repeatable): token texts (``<|im_end|>``) or ids.
    Empty: the checkpoint's meta.json ``generation.stop_token_ids``, else the tokenizer's EOS."""
    ignore_eos: bool = False
    """No token ends a row: every row generates ``max_new_tokens`` (fixed-length throughput,
    the same work for every decoder compared; ``--ignore-eos``)."""
    batch_size: int | None = None
    """Prompts decoded together (sorted by length first, to reduce padding); None = all the
    prompts of one ``complete`` call (the evaluation harness sets its own batch size)."""

    def validate(self) -> Self:
        """Raise ``UsageError`` (naming the option) on any bad setting; returns ``self``."""
        check_int("--max-new-tokens", self.max_new_tokens, lo=1)
        for name in ("block_size", "steps_per_block", "batch_size"):
            if getattr(self, name) is not None:
                check_int(_option(name), getattr(self, name), lo=1)
        check_int("--seed", self.seed)
        if self.draft_len is not None:
            check_int("--draft-len", self.draft_len, lo=1, hi=16)
        if self.strategy == "speculative" and self.self_correct:
            raise UsageError("--self-correct: not with --strategy speculative (its output is the "
                             "AR decode's; nothing is left to correct)")
        check_int("--revisit-window", self.revisit_window, lo=0)
        if self.revisit_window and not self.self_correct:
            raise UsageError("--revisit-window: needs --self-correct (it widens what "
                             "self-correction revisits)")
        if self.max_corrections_per_block is not None:
            check_int("--max-corrections-per-block", self.max_corrections_per_block, lo=0)
        check_choice("--strategy", self.strategy, STRATEGIES)
        check_choice("--bidirectional-context", self.bidirectional_context,
                     BIDIRECTIONAL_CONTEXTS)
        for name in ("threshold", "correction_threshold", "revisit_threshold"):
            check_range(_option(name), getattr(self, name), 0, 1, lo_open=True)
        check_range("--temperature", self.temperature, lo=0)
        if not math.isfinite(self.temperature):
            raise UsageError(f"--temperature: got {self.temperature!r}, expected a finite "
                             "number >= 0")
        if not isinstance(self.stop_tokens, (tuple, list)) or not all(
                isinstance(t, (str, int)) and not isinstance(t, bool) and str(t) != ""
                for t in self.stop_tokens):
            raise UsageError(f"--stop-token: got {self.stop_tokens!r}, expected token texts "
                             "or ids")
        return self

    def resolve(self, attention_mode: str, training_block_size: int) -> Self:
        """A copy of this (validated) config with the model-dependent defaults filled in and
        the checks that need the model (attention mode, block size) done."""
        cfg = dataclasses.replace(self)
        full = attention_mode == "bidirectional" and cfg.bidirectional_context == "full"
        if cfg.ar_baseline:
            if full:
                raise UsageError("--ar-baseline: --bidirectional-context full feeds the whole "
                                 "generation every step; use 'prefix' for one token at a time")
            cfg.block_size, cfg.strategy, cfg.steps_per_block = 1, "fixed", 1
        if full:
            cfg.kv_cache = False  # clean tokens attend to masked ones: nothing is final to cache
        if cfg.block_size is None:
            cfg.block_size = {"block": training_block_size, "causal": 1,
                              "bidirectional": cfg.max_new_tokens}[attention_mode]
        if cfg.strategy == "speculative" and not cfg.ar_baseline:
            if attention_mode != "block":
                raise UsageError(f"--strategy speculative: needs a block-mode model (this one: "
                                 f"{attention_mode})")
            if cfg.draft_len is None:
                cfg.draft_len = max(training_block_size - 1, 1)
        if cfg.steps_per_block is None:
            cfg.steps_per_block = cfg.block_size
        if cfg.max_corrections_per_block is None:
            cfg.max_corrections_per_block = cfg.block_size
        if cfg.revisit_window and (attention_mode != "block"
                                   or cfg.revisit_window > cfg.block_size):
            raise UsageError(f"--revisit-window: got {cfg.revisit_window}, expected at most the "
                             f"block size {cfg.block_size} and a block-mode model (this one: "
                             f"{attention_mode})")
        return cfg

    def settings(self) -> dict:
        return dataclasses.asdict(self)
