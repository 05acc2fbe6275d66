"""Sampler throughput against the AR baseline of the same model, and a speed/quality sweep.

Measured (docs/method.md 8): tokens per second, tokens per forward, batched model calls and
per-sample latency p50/p90. The AR baseline decodes the same prompts one token per forward with
the same KV cache; ``speedup`` is the median ratio over interleaved pairs of runs
(``paired_ratio``). The sweep's quality proxies need no references: ``agreement`` with the
model's most careful decode, ``heldout_accuracy`` against the prompt file's true continuation,
and the model's own block-wise ``nll`` of the output. Prompts default to snippets of the
interpreter's standard library. docs/sampling.md (Commands, ``bench-sampler``) defines each
figure.
"""

import dataclasses
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

from megatron_diffusion.sampling.masks import ChunkAttention, chunk_mask, clean_block_ids


def stdlib_prompts(tokenizer, num_prompts: int, prompt_len: int,
                   continuation_len: int = 0) -> list[list[int]]:
    """``num_prompts`` token prompts of exactly ``prompt_len`` tokens from stdlib modules.

    With ``continuation_len`` the list holds ``prompt_len + continuation_len`` tokens per entry
    (the caller splits off the true continuation)."""
    out = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        lines = text.splitlines(keepends=True)
        first = next((i for i, line in enumerate(lines)
                      if line.startswith(("def ", "class "))), None)
        if first is None:
            continue
        ids = tokenizer.encode("".join(lines[first:]))
        if len(ids) >= prompt_len + continuation_len:
            out.append(ids[:prompt_len + continuation_len])
        if len(out) == num_prompts:
            return out
    raise RuntimeError(f"the standard library gave only {len(out)} prompts of {prompt_len} tokens")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _run(decoder, prompts, clock=time.perf_counter) -> tuple[float, list, int]:
    """One timed decode: ``(wall seconds, completions, batched model calls)``; the calls are
    every forward of the decode, summed over its batches (the decoder's own counter)."""
    core = getattr(decoder, "core", None)
    counter = core if core is not None else decoder  # hf_baseline.HFGenerate counts its own
    calls_before = counter.num_model_calls
    _sync()
    start = clock()
    if core is not None:
        completions, _ = decoder.generate_ids(prompts)
    else:  # hf_baseline.HFGenerate
        completions = decoder.generate(prompts)
    _sync()
    wall = clock() - start
    return wall, completions, counter.num_model_calls - calls_before


def measure_interleaved(decoders: dict, prompts: list[list[int]], warmup: bool = True,
                        repeats: int = 1, clock=time.perf_counter, progress: bool = False) -> dict:
    """Time several decoders on ``prompts`` interleaved (A, B, A, B, ...: on a shared machine
    load changes affect all alike). Each one's figures come from its median run (by wall time;
    the lower middle one for an even ``repeats``), with every run's wall time and tokens/s in
    ``wall_seconds_each``/``tokens_per_second_each``, in run order, for ``paired_ratio``.
    ``decoders``: name -> a ``DiffusionSampler`` or an ``hf_baseline.HFGenerate``;
    ``progress``: a line per timed run (outside the timing)."""
    from megatron_diffusion.progress import Progress

    if warmup:
        for d in decoders.values():
            size = getattr(getattr(d, "cfg", None), "batch_size", None) or len(prompts)
            _run(d, prompts[:size], clock)
    runs = {name: [] for name in decoders}
    with Progress(repeats * len(decoders), "bench-sampler", unit="run", enabled=progress) as bar:
        for _ in range(repeats):
            for name, d in decoders.items():
                runs[name].append(_run(d, prompts, clock))
                bar.update()
    return {name: _median_summary(decoders[name], runs[name], prompts) for name in decoders}


def _median_summary(decoder, runs: list, prompts) -> dict:
    median = sorted(runs, key=lambda run: run[0])[(len(runs) - 1) // 2]
    return {**_summary(decoder, *median, prompts),
            "wall_seconds_each": [wall for wall, _, _ in runs],
            "tokens_per_second_each": [sum(len(c.tokens) for c in completions) / wall
                                       for wall, completions, _ in runs]}


def measure(sampler, prompts: list[list[int]], warmup: bool = True, repeats: int = 1) -> dict:
    """Run ``sampler`` (a ``DiffusionSampler``) over ``prompts``; throughput and latency of the
    median of ``repeats`` runs (decoding is deterministic, only the timing varies)."""
    return measure_interleaved({"one": sampler}, prompts, warmup, repeats)["one"]


def paired_ratio(a: dict, b: dict, key: str = "tokens_per_second_each") -> dict:
    """``a`` over ``b`` (two ``measure_interleaved`` results) as the median of the per-pair
    ratios of their interleaved runs, with the spread: ``{"median", "min", "max", "each"}``.

    Run ``i`` of ``a`` and run ``i`` of ``b`` ran back to back, under about the same load, so
    their ratio is a fair comparison even when the load changes between pairs; the median
    ignores a pair hit by a load spike. The ratio of each side's fastest run instead compares
    runs from different moments: under load it showed a 1.17x "speedup" between two identical
    decoders."""
    each = [x / y for x, y in zip(a[key], b[key], strict=True)]
    return {"median": float(np.median(each)), "min": min(each), "max": max(each), "each": each}


def _summary(decoder, wall: float, completions: list, num_calls: int, prompts) -> dict:
    num_tokens = sum(len(c.tokens) for c in completions)
    num_forwards = sum(c.num_forwards for c in completions)
    latency = np.array([c.seconds for c in completions])
    out = {
        "tokens_per_second": num_tokens / wall,
        "tokens_per_forward": num_tokens / max(num_forwards, 1),
        "num_forwards": num_forwards,
        "num_model_calls": num_calls,
        "num_tokens": num_tokens,
        "num_prompts": len(prompts),
        "wall_seconds": wall,
        "latency_p50": float(np.percentile(latency, 50)),
        "latency_p90": float(np.percentile(latency, 90)),
        "_completions": completions,
    }
    if getattr(decoder, "core", None) is None:  # HF generate
        return {**out, "decoder": "transformers generate (greedy)",
                "batch_size": decoder.batch_size, "max_new_tokens": decoder.max_new_tokens,
                "device": str(decoder.model.device)}
    cfg = decoder.cfg
    tp = decoder.settings["tensor_model_parallel_size"]
    return {
        **out,
        "tokens_per_second_per_device": num_tokens / wall / tp,
        "tensor_model_parallel_size": tp,
        "batch_size": cfg.batch_size or len(prompts),
        "block_size": cfg.block_size,
        "strategy": cfg.strategy,
        "steps_per_block": cfg.steps_per_block,
        "threshold": cfg.threshold,
        "kv_cache": decoder.core.use_cache,
        "max_new_tokens": cfg.max_new_tokens,
        "device": decoder.settings["device"],
    }


def agreement(tokens: list[int], reference: list[int]) -> float:
    n = max(len(tokens), len(reference))
    same = sum(a == b for a, b in zip(tokens, reference))
    return same / n if n else 1.0


@torch.no_grad()
def block_nll(sampler, prompt: list[int], tokens: list[int]) -> tuple[float, int]:
    """Summed NLL of ``tokens`` after ``prompt``, block by block at the training block size."""
    core = sampler.core
    rules = core.rules
    B = dataclasses.replace(core.cfg, block_size=None, ar_baseline=False).resolve(
        rules.mode, rules.training_block_size).block_size
    attention = ChunkAttention.for_model(rules.mode, rules.clean_stream)
    device, P, G = core.backend.device, len(prompt), len(tokens)
    seq = torch.tensor(prompt + tokens, device=device)[None]
    pad = torch.zeros(1, dtype=torch.long, device=device)
    blocks = clean_block_ids(pad, P, P + G, B)
    positions = torch.arange(P + G, device=device)[None]
    total = 0.0
    with core.backend.session(capacity=P + G, use_cache=False):
        for start in range(P, P + G, B):
            end = min(start + B, P + G)
            in_end = P + G if rules.mode == "bidirectional" else end
            inputs = seq[:, :in_end].clone()
            inputs[:, start:] = rules.mask_id
            one = torch.ones(1, dtype=torch.long, device=device)
            mask = chunk_mask(attention, pad, blocks, in_start_B=0 * one, in_end_B=in_end * one,
                              block_start_B=start * one, width=in_end, key_len=in_end,
                              seq_end=P + G)
            index = torch.arange(start - core.shift, end - core.shift, device=device)[None]
            logits = core.backend.forward(inputs, positions[:, :in_end], mask,
                                          write_start_B=0 * one, logit_index_BN=index)
            logp = torch.log_softmax(logits[0], dim=-1)
            total -= float(logp.gather(-1, seq[0, start:end, None]).sum())
    return total, G


def heldout_accuracy(tokens: list[int], truth: list[int]) -> float:
    """Fraction of the true continuation's positions that the output reproduces."""
    return sum(a == b for a, b in zip(tokens, truth)) / len(truth) if truth else float("nan")


def quality(sampler, prompts, completions, reference, truths=None) -> dict:
    nll = [block_nll(sampler, p, c.tokens) for p, c in zip(prompts, completions)]
    out = {
        "agreement": float(np.mean([agreement(c.tokens, r.tokens)
                                    for c, r in zip(completions, reference)])),
        "nll": sum(s for s, _ in nll) / max(sum(n for _, n in nll), 1),
    }
    if truths is not None:
        out["heldout_accuracy"] = float(np.mean([heldout_accuracy(c.tokens, t)
                                                 for c, t in zip(completions, truths)]))
    return out
