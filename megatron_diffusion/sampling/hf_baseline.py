"""HF ``generate`` on the same prompts: the reference AR decoder ``bench-sampler`` compares with.

``bench-sampler --hf-baseline PATH`` loads a transformers model — an HF directory (an
``mcore-to-hf`` export, or the model the checkpoint was converted from) or a GGUF file (or a
directory holding exactly one, loaded with ``gguf_file=``, dequantised to fp32) — and decodes
the benchmark's token prompts greedily with ``model.generate`` (same ``max_new_tokens``, same stop
ids, ``min_new_tokens`` with ``--ignore-eos``), ``batch_size`` prompts at a time, left-padded
with an attention mask. Outputs are ``Completion`` s like the sampler's: ids after the prompt up
to and including the first stop id, so tokens/s count the same tokens on both sides.
``num_model_calls`` counts every forward of the model (a hook on it), summed over batches, as
the sampler's counter does.
"""

import time
from pathlib import Path

import torch

from megatron_diffusion.errors import UsageError
from megatron_diffusion.sampling.sampler import Completion


def load_hf_model(path: str):
    """``AutoModelForCausalLM`` in fp32 eval mode from an HF directory or a GGUF file."""
    from transformers import AutoModelForCausalLM

    p = Path(path)
    kwargs = {}
    if p.is_file() and p.suffix == ".gguf":
        p, kwargs["gguf_file"] = p.parent, p.name
    elif p.is_dir() and not (p / "config.json").is_file():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) != 1:
            raise UsageError(f"--hf-baseline: {path} has no config.json and "
                             f"{len(ggufs)} .gguf files (expected an HF directory or one GGUF)")
        kwargs["gguf_file"] = ggufs[0].name
    elif not p.is_dir():
        raise UsageError(f"--hf-baseline: {path} is neither an HF model directory nor a .gguf")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32, **kwargs)
    except Exception as e:  # transformers raises OSError/ValueError/... with long messages
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--hf-baseline: transformers cannot load {path}: {first}") from None
    return model.eval()


class HFGenerate:
    """Greedy ``generate`` of one HF model, with the sampler's prompt/stop conventions."""

    def __init__(self, model, *, max_new_tokens: int, stop_ids: tuple[int, ...], pad_id: int,
                 batch_size: int):
        self.model, self.max_new_tokens = model, max_new_tokens
        self.stop_ids, self.pad_id, self.batch_size = tuple(stop_ids), pad_id, batch_size
        self.vocab_size = model.get_input_embeddings().weight.shape[0]
        self.num_model_calls = 0
        """Forwards of ``model`` so far (each batched call once), like ``BlockSampler``'s."""
        model.register_forward_pre_hook(self._count_call)

    def _count_call(self, module, args) -> None:
        self.num_model_calls += 1

    def check_prompts(self, prompts: list[list[int]]) -> None:
        top = max(max(p) for p in prompts)
        if top >= self.vocab_size:
            raise UsageError(f"--hf-baseline: prompt token id {top} is outside the HF model's "
                             f"vocabulary ({self.vocab_size}): not the checkpoint's model?")

    def _batch(self, prompts: list[list[int]]) -> list[list[int]]:
        from transformers import GenerationConfig

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            attention[i, width - len(p):] = 1
        stop = list(self.stop_ids)
        config = GenerationConfig(
            do_sample=False, max_new_tokens=self.max_new_tokens,
            min_new_tokens=0 if stop else self.max_new_tokens,
            eos_token_id=stop or None, pad_token_id=self.pad_id)
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=attention, generation_config=config)
        return [self._cut(row) for row in out[:, width:].tolist()]

    def _cut(self, row: list[int]) -> list[int]:
        for i, t in enumerate(row):
            if t in self.stop_ids:
                return row[:i + 1]
        return row

    def generate(self, prompts: list[list[int]]) -> list[Completion]:
        self.check_prompts(prompts)
        out = []
        for first in range(0, len(prompts), self.batch_size):
            start = time.perf_counter()
            rows = self._batch(prompts[first:first + self.batch_size])
            seconds = time.perf_counter() - start
            out += [Completion(tokens=r, num_forwards=len(r), seconds=seconds,
                               stopped_at_eos=bool(r) and r[-1] in self.stop_ids,
                               step_map=list(range(len(r)))) for r in rows]  # AR: one per forward
        return out
