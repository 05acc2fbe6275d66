"""The contract between a sampler and the benchmarks: prompts in, completions + cost out.

Benchmarks here judge a model by pass@k *together with* decoding speed (Seed Diffusion 3.4,
docs/method.md 8: tokens per forward pass and tokens per second against AR decoding). So a
completion carries what it cost (``sampling.result.GenerationResult``, defined with the
sampler that makes it). ``megatron_diffusion.loading.trained.load_sampler(checkpoint,
**knobs)`` returns a ``Sampler``; a plain function ``CompletionFn`` works too (tests, baselines).
"""

import time
from typing import Callable, Protocol

from megatron_diffusion.sampling.result import GenerationResult

CompletionFn = Callable[[list[str]], list[GenerationResult]]


class Sampler(Protocol):
    """What ``load_sampler`` returns."""

    settings: dict
    """Every decoding setting in effect, defaults included (block size, commit rule, steps,
    threshold, temperature, max new tokens, seed, ...): recorded verbatim with the scores."""

    def complete(self, prompts: list[str]) -> list[GenerationResult]:
        """One completion per prompt, in order."""
        ...


def generate(prompts: list[str], completion_fn: CompletionFn, batch_size: int,
             progress: bool = True) -> tuple[list[GenerationResult], float]:
    """All completions, ``batch_size`` prompts per call; also returns the total wall-clock time."""
    from megatron_diffusion.progress import Progress

    results: list[GenerationResult] = []
    start = time.monotonic()
    with Progress(len(prompts), "generating", unit="sample", enabled=progress) as bar:
        for first in range(0, len(prompts), batch_size):
            batch = prompts[first:first + batch_size]
            out = completion_fn(batch)
            if len(out) != len(batch) or not all(isinstance(r, GenerationResult) for r in out):
                raise TypeError(f"completion function returned {len(out)} items for {len(batch)} prompts; "
                                "expected one GenerationResult per prompt")
            results.extend(out)
            bar.update(len(batch))
    return results, time.monotonic() - start
