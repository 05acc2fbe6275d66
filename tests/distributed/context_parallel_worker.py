"""torchrun worker: one forward/backward of a tiny block-diffusion model under context parallelism.

``equivalence_worker``'s setup (weights set by name from a seed, the same global batch for every
layout, data-parallel rank r taking micro-batches r, r+dp, ...) with a ``--cp`` axis: each CP rank
feeds its slice of every row's ``x_t (+) x0`` and the Ulysses core attention sees the whole row.
Saves, per case (``CASES``: packing, clean stream, logit shift, AR term, attention backend), the
global loss, the logits of the first micro-batch (gathered over TP and CP) and every gradient, so
any layout can be compared with one process. Several cases run in one process: a spawn costs more
than a tiny model's step.
"""

import argparse
import contextlib
import sys

import torch
import torch.distributed as dist

from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model import weights
from megatron_diffusion.model.gpt import transformer_config
from megatron_diffusion.model.inputs import forward_kwargs
from megatron_diffusion.parallel import context_parallel
from megatron_diffusion.parallel.process_groups import initialize_model_parallel
from megatron_diffusion.training.model_setup import build_training_model, unwrap
from megatron_diffusion.training.forward_backward import ForwardSpec, forward_backward

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from tests.helpers import seeded_full_weights, synthetic_batch, tiny_model_config  # noqa: E402


CASES = {  # name: (visibility, clean_stream, logit_shift, ar_loss_weight, backend)
    "shared": ("shared", "block_causal", False, 0.0, "sdpa"),
    "isolated": ("isolated", "block_causal", False, 0.0, "sdpa"),
    "shift_ar": ("isolated", "causal", True, 0.5, "sdpa"),
    "flex": ("isolated", "block_causal", False, 0.0, "flex"),  # forward only on CPU
}


def _args():
    p = argparse.ArgumentParser()
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--cp", type=int, default=1)
    p.add_argument("--cases", default="shared")
    p.add_argument("--out", required=True)
    return p.parse_args()


@torch.no_grad()
def _first_logits(chunks, batches, attn, backend, tp):
    """Forward-only logits of ``batches[0]``, gathered over TP (vocabulary) and CP (sequence)."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    collected = []

    def fwd(data_iterator, model):
        b = next(data_iterator)
        out = model(**context_parallel.shard_inputs(forward_kwargs(b, attn, backend)))
        return out, lambda o: (collected.append(o.detach()) or (o.sum() * 0, {}))

    get_forward_backward_func()(forward_step_func=fwd, data_iterator=iter(batches[:1]),
                                model=chunks[0], num_microbatches=1,
                                seq_length=batches[0].tokens_BS.shape[1], micro_batch_size=2,
                                forward_only=True)
    logits = None
    if collected:
        parts = [torch.empty_like(collected[0]) for _ in range(tp)]
        dist.all_gather(parts, collected[0].contiguous(),
                        group=ps.get_tensor_model_parallel_group())
        logits = context_parallel.gather_sequence(torch.cat(parts, dim=-1))
    objs = [None] * dist.get_world_size()
    dist.all_gather_object(objs, logits)
    return next(o for o in objs if o is not None)


def run_case(name: str, a) -> dict:
    from megatron.core import parallel_state as ps

    visibility, clean_stream, shift, ar_weight, backend = CASES[name]
    attn = AttentionConfig(mode="block", block_size=4, visibility=visibility,
                           clean_stream=clean_stream)
    cfg = tiny_model_config(logit_shift=shift, attention_backend=backend)
    tcfg = transformer_config(cfg, tensor_model_parallel_size=a.tp,
                              pipeline_model_parallel_size=a.pp)
    chunks = build_training_model(cfg, tcfg)
    models = unwrap(chunks)
    shapes = {k: v.shape for k, v in weights.full_over_pipeline_stages(models).items()}
    weights.load_full(models, seeded_full_weights(shapes))
    for c in chunks:
        c.zero_grad_buffer()

    docs = [5, 7, 4] if visibility == "isolated" else None
    batches = [synthetic_batch(attn, rows=2, seq_len=16, seed=100 + i, doc_lengths=docs)
               for i in range(4)]
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    cpu_flex = backend == "flex" and not torch.cuda.is_available()  # no flex backward on CPU
    with torch.no_grad() if cpu_flex else contextlib.nullcontext():
        spec = ForwardSpec(attn, LossConfig(ar_loss_weight=ar_weight), logit_shift=shift,
                           backend=backend)
        result = forward_backward(chunks, batches[dp_rank::dp], spec, forward_only=cpu_flex)
    grads = {} if cpu_flex else weights.full_over_pipeline_stages(models, grads=True)
    logits = _first_logits(chunks, batches, attn, backend, a.tp)[..., : cfg.vocab_size]
    cores = {type(m.self_attention.core_attention).__name__
             for m in models[0].modules() if hasattr(m, "self_attention")}
    return {"loss": result["loss"], "num_tokens": result["num_tokens"], "acc": result["acc"],
            "grads": grads, "logits": logits, "core_attention": sorted(cores)}


def main():
    a = _args()
    initialize_model_parallel(a.tp, a.pp, seed=1, context_parallel_size=a.cp)
    results = {name: run_case(name, a) for name in a.cases.split(",")}
    if dist.get_rank() == 0:
        torch.save(results, a.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
