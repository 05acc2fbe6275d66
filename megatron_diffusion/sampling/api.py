"""Text in, completions out: the sampler behind ``eval``, ``sample`` and ``bench-sampler``.

``loading.trained.load_sampler(checkpoint, **knobs)`` is the contract of docs/evaluation.md:
it loads the model (any TP size under torchrun) and its tokenizer and returns a
``DiffusionSampler`` whose ``settings`` records every decoding setting in effect and whose
``complete(prompts)`` returns one ``GenerationResult`` per prompt. Prompts are sorted by length
and decoded ``batch_size`` at a time (less padding), then put back in order.
"""

import dataclasses
import time

import torch

from megatron_diffusion.errors import UsageError
from megatron_diffusion.sampling.backend import ModelBackend
from megatron_diffusion.sampling.config import SamplerConfig
from megatron_diffusion.sampling.result import GenerationResult
from megatron_diffusion.sampling.sampler import BlockSampler, Completion, ModelRules

KNOBS = tuple(f.name for f in dataclasses.fields(SamplerConfig))


def stop_token_ids(tokenizer, stop_tokens, meta: dict) -> tuple[int, ...]:
    """Ids that end a row: ``stop_tokens`` (texts or ids; ``--stop-token``) if given, else the
    checkpoint's meta.json ``generation.stop_token_ids``, else the tokenizer's EOS."""
    if not stop_tokens:
        stored = (meta.get("generation") or {}).get("stop_token_ids")
        return tuple(int(i) for i in stored) if stored else (tokenizer.eos_id,)
    vocab = tokenizer.vocab_size
    out = []
    for token in stop_tokens:
        text = str(token)
        tid = int(text) if text.isdigit() else tokenizer.tokenizer.token_to_id(text)
        if tid is None or not 0 <= tid < vocab:
            raise UsageError(f"--stop-token: {text!r} is not a token of the checkpoint's "
                             f"tokenizer (expected a token text such as '<|im_end|>' or an id "
                             f"below {vocab})")
        out.append(tid)
    return tuple(dict.fromkeys(out))


def make_sampler(model, rules: ModelRules, cfg: SamplerConfig):
    """The decoder for ``cfg.strategy``: the block sampler (``fixed``/``threshold``, and the AR
    baseline) or the self-speculative decoder (``speculative``), both ``generate(prompts) ->
    list[Completion]`` over the same backend."""
    if cfg.strategy == "speculative" and not cfg.ar_baseline:
        from megatron_diffusion.sampling.speculative import SpeculativeSampler

        return SpeculativeSampler(model, rules, cfg)
    return BlockSampler(model, rules, cfg)


class DiffusionSampler:
    """A loaded checkpoint + tokenizer + decoding settings."""

    def __init__(self, loaded, tokenizer, cfg: SamplerConfig):
        self.loaded = loaded
        self.tokenizer = tokenizer
        rules = ModelRules.from_run_config(
            loaded.config, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
            stop_ids=stop_token_ids(tokenizer, cfg.stop_tokens, loaded.meta))
        self.core = make_sampler(ModelBackend(loaded.model), rules, cfg)
        self.cfg = self.core.cfg
        self.settings = {
            **self.cfg.settings(),
            "kv_cache": self.core.use_cache,
            "model_attention_mode": rules.mode,
            "model_clean_stream": rules.clean_stream,
            "model_training_block_size": rules.training_block_size,
            "model_logit_shift": rules.logit_shift,
            "stop_token_ids": list(self.core.stops),
            "params_dtype": loaded.config.model.params_dtype,
            "tensor_model_parallel_size": self.core.backend.tp_size,
            "device": str(self.core.backend.device),
            "checkpoint_step": loaded.meta.get("step"),
        }

    def with_settings(self, **changes) -> "DiffusionSampler":
        """A sampler on the same loaded weights and tokenizer whose settings are this one's
        (as resolved) with ``changes`` (``SamplerConfig`` fields) applied: how benchmarks build
        their variants (the AR baseline, a sweep point, ``ignore_eos``)."""
        return DiffusionSampler(self.loaded, self.tokenizer,
                                dataclasses.replace(self.cfg, **changes).validate())

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Prompt texts -> ids; special-token text (a chat template's ``<|im_start|>``) becomes
        the special id, as with HF's tokenizer (``LoadedTokenizer.encode_prompt``)."""
        ids = [self.tokenizer.encode_prompt(p) for p in prompts]
        self.core.check_prompts(ids)
        return ids

    def generate_ids(self, prompts: list[list[int]], progress: bool = False,
                     label: str = "sampling") -> tuple[list[Completion], list[float]]:
        """Completions in order, and each one's share of its batch's wall time; ``progress``:
        a bar (plain lines in a batch log) named ``label``."""
        from megatron_diffusion.progress import Progress

        self.core.check_prompts(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Completion | None] = [None] * len(prompts)
        shares = [0.0] * len(prompts)
        size = self.cfg.batch_size or max(len(prompts), 1)
        bar = Progress(len(prompts), label, unit="sample", enabled=progress)
        for first in range(0, len(order), size):
            chunk = order[first:first + size]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            done = self.core.generate([prompts[i] for i in chunk])
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            share = (time.perf_counter() - start) / len(chunk)
            for i, c in zip(chunk, done):
                out[i], shares[i] = c, share
            bar.update(len(chunk))
        bar.close()
        return out, shares

    def decode(self, completion: Completion) -> str:
        """The completion's text without its stop token."""
        ids = completion.tokens[:-1] if completion.stopped_at_eos else completion.tokens
        return self.tokenizer.decode(ids)

    def complete(self, prompts: list[str], progress: bool = False) -> list[GenerationResult]:
        ids = self.encode(prompts)
        completions, shares = self.generate_ids(ids, progress)
        return [GenerationResult(text=self.decode(c), num_forwards=c.num_forwards,
                                 num_tokens=len(c.tokens), seconds=s, step_map=tuple(c.step_map),
                                 prompt_ids=tuple(p), token_ids=tuple(c.tokens))
                for p, c, s in zip(ids, completions, shares)]

