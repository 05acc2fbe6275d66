"""``megatron-diffusion sample``: block-wise parallel sampling from a checkpoint (docs/sampling.md).

Writes one JSON line per prompt: ``prompt, completion, num_forwards, num_tokens, seconds,
step_map`` (the forward that committed each generated token, 0 = the first). Special-token text
in a prompt (``<|im_start|>``) is encoded as the special id, as HF's tokenizer does. ``--chat``
wraps each prompt as a user message in the checkpoint's chat template (``sampling.chat``); the
line then also has ``chat_prompt``, the text decoded from. Under
``torchrun`` with ``--tensor-model-parallel-size N`` every rank decodes (identical decisions from
the gathered logits) and rank 0 writes.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from megatron_diffusion.errors import UsageError, json_object
from megatron_diffusion.fileio import write_text_atomic
from megatron_diffusion.sampling.config import SamplerConfig


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """Checkpoint and decoding options shared by ``sample`` and ``bench-sampler``."""
    d = SamplerConfig()
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint directory, or a run directory (its latest checkpoint)")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    parser.add_argument("--block-size", type=int, default=None,
                        help="inference block size (default: the training block size)")
    parser.add_argument("--strategy", default=d.strategy,
                        help="'fixed', 'threshold', or 'speculative' (lossless self-speculative "
                        "decoding: the AR decode's output, several tokens per forward)")
    parser.add_argument("--draft-len", type=int, default=None,
                        help="speculative: draft tokens verified per forward (default: the "
                        "training block size - 1)")
    parser.add_argument("--steps-per-block", type=int, default=None,
                        help="fixed: steps per block (default: the block size)")
    parser.add_argument("--threshold", type=float, default=d.threshold,
                        help="threshold: commit probability, in (0, 1]")
    parser.add_argument("--temperature", type=float, default=d.temperature,
                        help="0 = greedy; > 0 samples (seeded by --seed)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--self-correct", action="store_true",
                        help="revisit committed tokens of the block (edit-trained models)")
    parser.add_argument("--correction-threshold", type=float, default=d.correction_threshold)
    parser.add_argument("--revisit-threshold", type=float, default=d.revisit_threshold,
                        help="self-correction: settle a filled block without one more forward "
                        "when all its tokens have at least this probability")
    parser.add_argument("--max-corrections-per-block", type=int, default=None)
    parser.add_argument("--revisit-window", type=int, default=d.revisit_window,
                        help="self-correction also revisits the last N positions of the "
                        "previous block (its cache recomputed on a change); block models")
    parser.add_argument("--no-kv-cache", action="store_true",
                        help="recompute the whole sequence every step (reference path)")
    parser.add_argument("--bidirectional-context", default=d.bidirectional_context,
                        help="bidirectional models: 'prefix' feeds prompt + finished blocks + "
                        "current block (Seed Diffusion 3.4; cached, approximate), 'full' the "
                        "whole generation with future blocks as [MASK] (no cache)")
    parser.add_argument("--ar-baseline", action="store_true",
                        help="one token per forward with the KV cache (block size 1)")
    parser.add_argument("--stop-token", action="append", default=None, metavar="TOKEN",
                        help="a token text (e.g. '<|im_end|>') or id that ends a row; "
                             "repeatable (default: the checkpoint's generation.stop_token_ids, "
                             "else EOS)")
    parser.add_argument("--ignore-eos", action="store_true",
                        help="no token ends a row: always generate --max-new-tokens "
                             "(fixed-length throughput)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1,
                        help="TP size (run under torchrun with this many processes)")
    parser.add_argument("--params-dtype", default=None, help="override: float32 or bfloat16")


def sampler_config(args) -> SamplerConfig:
    """The decoding options as a ``SamplerConfig`` (``load_sampler`` validates it)."""
    return SamplerConfig(
        max_new_tokens=args.max_new_tokens, block_size=args.block_size, strategy=args.strategy,
        draft_len=args.draft_len, steps_per_block=args.steps_per_block, threshold=args.threshold,
        temperature=args.temperature, seed=args.seed, self_correct=args.self_correct,
        correction_threshold=args.correction_threshold, revisit_threshold=args.revisit_threshold,
        max_corrections_per_block=args.max_corrections_per_block,
        revisit_window=args.revisit_window, kv_cache=not args.no_kv_cache,
        bidirectional_context=args.bidirectional_context,
        ar_baseline=args.ar_baseline, batch_size=args.batch_size,
        stop_tokens=tuple(args.stop_token or ()), ignore_eos=args.ignore_eos)


def load_from_args(args):
    from megatron_diffusion.loading.trained import load_sampler

    # bad settings fail (validated once, in load_sampler) before the checkpoint is looked at
    return load_sampler(args.checkpoint, sampler_config(args),
                        tensor_model_parallel_size=args.tensor_model_parallel_size,
                        params_dtype=args.params_dtype)


def is_rank_zero() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sampler_arguments(parser)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt text")
    src.add_argument("--prompts", help="JSON lines file, one {\"prompt\": TEXT} per line")
    parser.add_argument("--out", default=None, help="write JSON lines here (default: stdout)")
    parser.add_argument("--chat", action="store_true",
                        help="apply the checkpoint's chat template (meta.json "
                             "generation.chat_template) to each prompt as a user message, with "
                             "the generation prompt")


def check_out_file(path: str) -> None:
    """UsageError unless ``path`` can be written as a file: its directory exists and is
    writable, and ``path`` is not a directory."""
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"--out: {out} is a directory, expected a file path")
    if not out.parent.is_dir():
        raise UsageError(f"--out: directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK) or (out.exists()
                                                        and not os.access(out, os.W_OK)):
        raise UsageError(f"--out: {out} is not writable")


def read_prompt_texts(path: str) -> list[str]:
    """The ``prompt`` string of every line of a ``--prompts`` JSONL file (other fields are
    ignored; an on-policy prompt set with tests is ``onpolicy.prompts.read_prompts``)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--prompts: {p} does not exist")
    prompts = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        item = json_object(line, f"--prompts: {p} line {n}")
        if not isinstance(item.get("prompt"), str):
            raise UsageError(f"--prompts: {p} line {n}: expected an object with a string "
                             "'prompt'")
        prompts.append(item["prompt"])
    if not prompts:
        raise UsageError(f"--prompts: {p} holds no prompts")
    return prompts


def chat_prompts(sampler, prompts: list[str]) -> list[str]:
    """``prompts`` in the checkpoint's chat template (UsageError if it carries none)."""
    from megatron_diffusion.sampling.chat import chat_template, render_chat

    meta = sampler.loaded.meta
    template = chat_template(meta, f"checkpoint {sampler.loaded.path}")
    return render_chat(prompts, template, sampler.tokenizer, meta)


def run(args) -> int:
    prompts = [args.prompt] if args.prompt is not None else read_prompt_texts(args.prompts)
    if args.out is not None:
        check_out_file(args.out)  # before the model loads and decodes, not after
    sampler = load_from_args(args)
    texts = chat_prompts(sampler, prompts) if args.chat else prompts
    sampler.encode(texts)  # empty / too long prompts fail before any decoding
    results = sampler.complete(texts, progress=is_rank_zero())
    if not is_rank_zero():
        return 0
    lines = [json.dumps({"prompt": p, **({"chat_prompt": t} if args.chat else {}),
                         "completion": r.text, "num_forwards": r.num_forwards,
                         "num_tokens": r.num_tokens, "seconds": round(r.seconds, 6),
                         "step_map": list(r.step_map), "prompt_ids": list(r.prompt_ids),
                         "completion_ids": list(r.token_ids)})
             for p, t, r in zip(prompts, texts, results)]
    if args.out is None:
        sys.stdout.write("".join(line + "\n" for line in lines))
    else:
        write_text_atomic(args.out, "".join(line + "\n" for line in lines))
    return 0
