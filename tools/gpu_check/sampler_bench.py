"""Part ``sampler``: decoding speed of SmolLM2 (``models``) at batch 1 and 32 against the HBM bound.

Every variant generates exactly ``max_new_tokens`` per prompt (EOS ignored) from the same
``prompt_len``-token prompts (stdlib snippets with the real tokenizer, random ids otherwise):

* ``ar_baseline``: our AR decode, one token per forward with the KV cache;
* ``block4_threshold0.9``: the block sampler, B = 4, Fast-dLLM threshold rule (tokens per
  forward depend on the model's confidence);
* ``block4_fixed_1step``: B = 4 committed in one step (4 tokens per forward whatever the
  weights: the forward rate at the block sampler's shapes);
* ``speculative_d3``: lossless self-speculative decoding (``sampling/speculative.py``), 3 draft
  tokens verified per forward; a converted AR model is read as a block model with a causal clean
  stream and the logit shift (its clean stream is the AR model either way; an untrained draft
  block is rarely accepted, so tokens per forward say something only for a CPT checkpoint passed
  with ``--checkpoint``): the forward rate at self-speculation's shapes (20 tokens a row);
* ``hf_generate``: ``transformers`` greedy ``generate`` of the same weights, ``min_new_tokens``
  = ``max_new_tokens`` (one forward per token).

``forwards_per_s`` counts batched forwards. The HBM bound: a forward reads every weight once, so
``forwards/s <= bandwidth / weight bytes`` (KV-cache reads only lower it further);
``fraction_of_hbm_bound`` uses the copy bandwidth measured in the ``ceilings`` part,
``hbm_bound_datasheet`` the H200's 4.8 TB/s.
"""

import time

import torch

from tools.gpu_check import models
from tools.gpu_check.shapes import shapes_for
from tools.gpu_check.timing import synchronize

DATASHEET_BANDWIDTH = 4.8e12
VARIANTS = {"ar_baseline": dict(ar_baseline=True),
            "block4_threshold0.9": dict(block_size=4, strategy="threshold", threshold=0.9),
            "block4_fixed_1step": dict(block_size=4, strategy="fixed", steps_per_block=1),
            "speculative_d3": dict(strategy="speculative", draft_len=3)}


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def bound_figures(ctx, forwards_per_s: float, nbytes: int) -> dict:
    bw = ctx.shared.get("bandwidth_bytes_per_s")
    return {"weight_bytes": nbytes, "forwards_per_s": forwards_per_s,
            "hbm_bound_measured": bw / nbytes if bw else None,
            "hbm_bound_datasheet": DATASHEET_BANDWIDTH / nbytes,
            "fraction_of_hbm_bound": forwards_per_s * nbytes / bw if bw else None}


def prompts_for(sm, batch: int, prompt_len: int) -> list[list[int]]:
    tokenizer = sm.sampler.tokenizer
    if hasattr(tokenizer, "encode"):
        from megatron_diffusion.sampling.bench import stdlib_prompts

        return stdlib_prompts(tokenizer, batch, prompt_len)
    g = torch.Generator().manual_seed(batch)
    vocab = sm.sampler.loaded.config.model.mask_token_id
    return torch.randint(1, vocab, (batch, prompt_len), generator=g).tolist()


def as_speculative_model(sampler):
    """``sampler`` with its model read as a block model with a causal clean stream and the
    logit shift (unchanged if it is one): what self-speculative decoding needs."""
    import copy
    import dataclasses

    cfg = copy.deepcopy(sampler.loaded.config)
    if (cfg.attention.mode, cfg.attention.clean_stream, cfg.model.logit_shift) == (
            "block", "causal", True):
        return sampler
    cfg.attention.mode, cfg.attention.clean_stream = "block", "causal"
    cfg.attention.block_size, cfg.model.logit_shift, cfg.loss.objective = 4, True, "diffusion"
    loaded = dataclasses.replace(sampler.loaded, config=cfg)
    return type(sampler)(loaded, sampler.tokenizer, sampler.cfg)


def ours(ctx, sm, prompts, knobs: dict, max_new: int) -> dict:
    from megatron_diffusion.sampling.bench import measure

    base = sm.sampler
    if knobs.get("strategy") == "speculative":
        base = as_speculative_model(base)
    changes = {"block_size": None, "steps_per_block": None, "ar_baseline": False, **knobs}
    # base ignores EOS: fixed-length throughput
    variant = base.with_settings(max_new_tokens=max_new, batch_size=len(prompts), **changes)
    r = measure(variant, prompts)
    fps = r["num_model_calls"] / r["wall_seconds"]
    keep = ("tokens_per_second", "tokens_per_forward", "num_model_calls", "num_tokens",
            "wall_seconds", "latency_p50", "block_size", "strategy", "kv_cache")
    return {**{k: r[k] for k in keep}, **bound_figures(ctx, fps, weight_bytes(base.loaded.model))}


@torch.no_grad()
def hf_generate(ctx, hf, prompts, max_new: int) -> dict:
    device = next(hf.parameters()).device
    ids = torch.tensor(prompts, device=device)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                  min_new_tokens=max_new, do_sample=False, pad_token_id=0)
    hf.generate(**kwargs)  # warm-up
    synchronize()
    t0 = time.perf_counter()
    out = hf.generate(**kwargs)
    synchronize()
    wall = time.perf_counter() - t0
    new = out.shape[1] - ids.shape[1]
    return {"tokens_per_second": ids.shape[0] * new / wall, "tokens_per_forward": 1.0,
            "num_model_calls": new, "num_tokens": ids.shape[0] * new, "wall_seconds": wall,
            **bound_figures(ctx, new / wall, weight_bytes(hf))}


def sampler_part(ctx) -> dict:
    sh = shapes_for(ctx.dry_run)
    sm = models.load(ctx, sh.sampler_model)
    ctx.shared["sampler_model"] = sm
    out = {"source": sm.source, "weights": sm.weights,
           "checkpoint": str(sm.checkpoint) if sm.checkpoint else None,
           "gguf": str(sm.gguf) if sm.gguf else None, "gguf_note": ctx.shared.get("gguf_note"),
           "max_new_tokens": sh.max_new_tokens,
           "prompt_len": sh.prompt_len, "rows": []}
    ctx.partial.update(out)
    rows = out["rows"]
    need = 2.0 if ctx.dry_run else 8.0
    for batch in sh.sampler_batches:
        prompts = prompts_for(sm, batch, sh.prompt_len)
        for name, knobs in VARIANTS.items():
            ctx.guard(rows, f"{name}/batch{batch}",
                      lambda: {"batch": batch, **ours(ctx, sm, prompts, knobs, sh.max_new_tokens)},
                      need_s=need)
    hf = None
    for batch in sh.sampler_batches:
        prompts = prompts_for(sm, batch, sh.prompt_len)

        def run_hf():
            nonlocal hf
            hf = hf or models.hf_model(sm, sh.sampler_model, ctx.work_dir)
            return {"batch": batch, **hf_generate(ctx, hf, prompts, sh.max_new_tokens)}

        ctx.guard(rows, f"hf_generate/batch{batch}", run_hf, need_s=need)
    del hf
    return out
