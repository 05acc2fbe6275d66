"""Held-out figures during training: validation loss/accuracy and infill accuracy.

Both read the store's validation split in the training process (no loader workers), one
micro-batch per data-parallel rank at a time, through a fresh loader from sample 0, so every
evaluation sees the same rows with the same per-sample corruption seeds. ``eval_iters``
micro-batches (at least one per pipeline stage) go through ``forward_backward.forward_backward`` forward
only, reduced over ranks like a training step:

* ``validate``: the training objective itself (``corruption.factory.eval_corruption_config``:
  post-warmup, mask stage), its per-token loss and argmax accuracy at the loss positions;
* ``infill``: ``eval infill``'s masked-token accuracy at fixed mask rates
  (``corruption.fixed_rate.FixedRateMasking``, plain cross entropy), logged as ``infill_acc@r``;
  none for a causal run (masked infill is not its task).
"""

import dataclasses

import torch

from megatron_diffusion.config import RunConfig
from megatron_diffusion.corruption.factory import eval_corruption_config, make_corruptor
from megatron_diffusion.corruption.fixed_rate import FixedRateMasking
from megatron_diffusion.data.loader import DiffusionDataLoader, PackedDataset
from megatron_diffusion.data.vocab import store_vocabulary
from megatron_diffusion.distill.store import trajectory_rows
from megatron_diffusion.errors import UsageError
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.training.forward_backward import ForwardSpec, forward_backward

INFILL_RATES = (0.15, 0.5, 0.9)


class HeldOut:
    """The validation split of a run's first store, read by this data-parallel rank."""

    def __init__(self, cfg: RunConfig, store, spec: ForwardSpec, *, dp_rank: int, dp_size: int):
        self.cfg, self.store, self.spec = cfg, store, spec
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.data = dataclasses.replace(cfg.data, split="validation", num_workers=0,
                                        global_batch_size=cfg.data.micro_batch_size * dp_size)
        self.corruptor = make_corruptor(eval_corruption_config(cfg), **store_vocabulary(store))

    def check_split(self) -> None:
        """Validation and infill evaluation need validation rows: find out now, not after the
        steps (opening the split builds its packing plan, or says why there is none)."""
        tr = self.cfg.training
        if not ((tr.eval_interval and tr.eval_iters) or tr.infill_eval_interval):
            return
        try:
            PackedDataset(self.data, None, self.store.tokenizer_hash, self.store.vocab_size)
        except UsageError as e:
            raise UsageError(f"training.eval_interval/infill_eval_interval: no validation data "
                             f"({e}); preprocess with --validation-fraction > 0 (for a .bin/.idx "
                             "dataset: data.indexed_validation_fraction) or set both to 0") from None

    @torch.no_grad()
    def evaluate(self, chunks, corrupt_fn, spec: ForwardSpec) -> dict:
        """Forward-only over ``eval_iters`` validation micro-batches corrupted by ``corrupt_fn``."""
        for c in chunks:
            c.eval()
        loader = DiffusionDataLoader(self.data, data_parallel_rank=self.dp_rank,
                                     data_parallel_size=self.dp_size, corrupt_fn=corrupt_fn,
                                     tokenizer_hash=self.store.tokenizer_hash,
                                     vocab_size=self.store.vocab_size,
                                     trajectory_rows=trajectory_rows(self.data))
        it = iter(loader)
        n = max(self.cfg.training.eval_iters, self.cfg.parallel.pipeline_model_parallel_size)
        batches = [next(it) for _ in range(n)]
        res = forward_backward(chunks, batches, spec, forward_only=True)
        for c in chunks:
            c.train()
        return res

    def validate(self, chunks) -> tuple[float, float]:
        """Validation loss (the training objective) and accuracy at its loss positions."""
        res = self.evaluate(chunks, self.corruptor.corrupt, self.spec)
        return res["loss"], res["acc"]

    def infill(self, chunks, rates=INFILL_RATES) -> dict:
        """``{"infill_acc@r": accuracy}`` at each fixed mask rate ``r``; {} for a causal run."""
        attn = self.spec.attention
        if attn.mode == "causal":
            return {}
        spec = dataclasses.replace(self.spec, loss=LossConfig())
        out = {}
        for r in rates:
            fn = FixedRateMasking(r, mask_token_id=self.cfg.model.mask_token_id,
                                  block_size=attn.block_size if attn.mode == "block" else None,
                                  visibility=attn.visibility).corrupt
            out[f"infill_acc@{r}"] = self.evaluate(chunks, fn, spec)["acc"]
        return out
