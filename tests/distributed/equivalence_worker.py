"""torchrun worker: one forward/backward of a tiny model under a given TP/PP/VPP/DP layout.

Weights are set by name from a seed (``seeded_full_weights``) and the global batch is the same
for every layout (data-parallel rank r takes micro-batches r, r+dp, ...), so every layout must
produce the same loss, logits and gradients as one process.
"""

import argparse
import sys

import torch
import torch.distributed as dist

from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model import weights
from megatron_diffusion.model.gpt import transformer_config
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.parallel.process_groups import initialize_model_parallel
from megatron_diffusion.training.model_setup import build_training_model, unwrap
from megatron_diffusion.training.forward_backward import ForwardSpec, forward_backward

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from tests.helpers import seeded_full_weights, synthetic_batch, tiny_model_config  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--vpp", type=int, default=None)
    p.add_argument("--mode", default="block")
    p.add_argument("--visibility", default="shared")
    p.add_argument("--dist-opt", action="store_true")
    p.add_argument("--qwen3", action="store_true", help="q/k norms, head width 32 of 64")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    initialize_model_parallel(a.tp, a.pp, a.vpp, seed=1)
    from megatron.core import parallel_state as ps

    seq_len = 16
    attn = AttentionConfig(mode=a.mode, block_size=4, visibility=a.visibility)
    cfg = tiny_model_config(**(dict(qk_layernorm=True, kv_channels=32) if a.qwen3 else {}))
    tcfg = transformer_config(cfg, tensor_model_parallel_size=a.tp, pipeline_model_parallel_size=a.pp,
                              virtual_pipeline_model_parallel_size=a.vpp)
    chunks = build_training_model(cfg, tcfg, use_distributed_optimizer=a.dist_opt)
    models = unwrap(chunks)
    shapes = {k: v.shape for k, v in weights.full_over_pipeline_stages(models).items()}
    weights.load_full(models, seeded_full_weights(shapes))
    for c in chunks:
        c.zero_grad_buffer()

    docs = [5, 7, 4] if a.visibility == "isolated" else None
    batches = [synthetic_batch(attn, rows=2, seq_len=seq_len, seed=100 + i, doc_lengths=docs)
               for i in range(4)]
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    mine = batches[dp_rank::dp]
    result = forward_backward(chunks, mine, ForwardSpec(attn, LossConfig()))
    grads = weights.full_over_pipeline_stages(models, grads=True)

    # logits of the first micro-batch, forward only, gathered over TP on the last pipeline stage
    logits = None
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron_diffusion.model.inputs import model_inputs

    collected = []

    def fwd(data_iterator, model):
        b = next(data_iterator)
        out = model(*model_inputs(b, attn))
        return out, lambda o: (collected.append(o.detach()) or (o.sum() * 0, {}))

    # interleaving needs at least PP micro-batches; only the first one's logits are kept
    fwd_batches = batches[: max(1, a.pp)]
    its = [iter(fwd_batches) for _ in chunks] if len(chunks) > 1 else iter(fwd_batches)
    get_forward_backward_func()(forward_step_func=fwd, data_iterator=its,
                                model=chunks if len(chunks) > 1 else chunks[0],
                                num_microbatches=len(fwd_batches), seq_length=batches[0].tokens_BS.shape[1],
                                micro_batch_size=2, forward_only=True)
    if collected:
        local = collected[0]
        parts = [torch.empty_like(local) for _ in range(a.tp)]
        dist.all_gather(parts, local.contiguous(), group=ps.get_tensor_model_parallel_group())
        logits = torch.cat(parts, dim=-1)[..., : cfg.vocab_size]

    objs = [None] * dist.get_world_size()
    dist.all_gather_object(objs, logits)
    logits = next(o for o in objs if o is not None)
    if dist.get_rank() == 0:
        torch.save({"loss": result["loss"], "num_tokens": result["num_tokens"], "grads": grads,
                    "logits": logits}, a.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
