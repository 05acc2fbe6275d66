"""``GenerationResult``: one completion and what it cost — what every sampler returns.

Benchmarks judge a model by pass@k *together with* decoding speed (Seed Diffusion 3.4: tokens
per forward pass and tokens per second against AR decoding), so a completion carries its cost.
``DiffusionSampler.complete`` returns these; the evaluation harness (``evaluation.generation``)
consumes them from any sampler or plain completion function.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationResult:
    """One completion and what it cost."""

    text: str
    """The generated text after the prompt (not yet post-processed)."""
    num_forwards: int
    """Model forward passes that produced this sample; a batched forward counts once for each
    sample in the batch (so tokens / forwards is the decoding parallelism)."""
    num_tokens: int
    """Tokens generated for this sample, up to and including EOS."""
    seconds: float
    """Wall-clock generation time attributed to this sample: a batch's time divided by its size,
    so that the sum over samples is the total generation time."""
    step_map: tuple[int, ...] = ()
    """Per generated token, the forward of this sample that committed it (0 = the first):
    ``sampler.Completion.step_map``; empty where a sampler does not record it."""
    prompt_ids: tuple[int, ...] = ()
    """The prompt as the model saw it (token ids); empty where a sampler does not record it."""
    token_ids: tuple[int, ...] = ()
    """The generated ids, up to and including the stop token (``num_tokens`` of them), so a
    comparison of two decodes needs no re-tokenising."""
