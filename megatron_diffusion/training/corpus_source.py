"""The ``corpus`` step source: CPT and SFT (and the AR stage) on rows of the token store.

Each step takes this data-parallel rank's share of the global batch from the packing plan
(``data.loader``), corrupted in the loader workers with the step's curriculum: corruption
warmup (``u_max``, Stable-DiffCoder), then the mask stage, then the edit stage for the last
fraction of steps (Seed Diffusion; docs/method.md). The held-out split gives validation loss
and infill accuracy when due (``validation``). The loader's position is the checkpointed state.
"""

import itertools

import torch
import torch.distributed as dist

from megatron_diffusion.corruption.factory import make_corruptor
from megatron_diffusion.data.loader import DiffusionDataLoader, LoaderWorkerDied, build_indices
from megatron_diffusion.data.vocab import store_vocabulary
from megatron_diffusion.distill.store import trajectory_rows
from megatron_diffusion.parallel.process_groups import host_collective
from megatron_diffusion.training.forward_backward import forward_backward
from megatron_diffusion.training.step_source import StepSource
from megatron_diffusion.training.train_step import StepCost
from megatron_diffusion.training.validation import HeldOut


class CorpusSource(StepSource):
    """Corrupted rows of ``data.blend``: ``training.step_source: corpus`` (the default)."""

    def build(self, run) -> None:
        cfg, store = self.cfg, run.stores[0]
        self.corruptor = make_corruptor(cfg, **store_vocabulary(store))
        self.held_out = HeldOut(cfg, store, run.spec, dp_rank=run.dp_rank, dp_size=run.dp_size)
        num_samples = cfg.training.train_iters * cfg.data.global_batch_size
        run.on_rank0_agreed(lambda: build_indices(cfg.data, num_samples),
                            "data.blend: rank 0 could not build the packing plan")
        self.loader = DiffusionDataLoader(cfg.data, data_parallel_rank=run.dp_rank,
                                          data_parallel_size=run.dp_size,
                                          corrupt_fn=self.corruptor.corrupt,
                                          tokenizer_hash=store.tokenizer_hash,
                                          vocab_size=store.vocab_size,
                                          trajectory_rows=trajectory_rows(cfg.data))
        self.held_out.check_split()

    def cost(self, run) -> StepCost:
        return StepCost.of(self.cfg, run.num_params, dist.get_world_size())

    def forward_backward(self, chunks, microbatches: list, spec) -> dict:
        return forward_backward(chunks, microbatches, spec)

    def steps(self, run, first_step: int):
        """A loader worker's death on any rank raises ``LoaderWorkerDied`` on every rank before
        the step, the loader back at its start (what the completed steps consumed)."""
        it = iter(self.loader)
        try:
            for step in itertools.count(first_step):
                start, died = self.loader.consumed_samples, None
                try:
                    microbatches = [next(it) for _ in range(run.num_microbatches)]
                except LoaderWorkerDied as e:
                    died = e
                died = self._agree_on_loader(died, run.rank)
                if died is not None:
                    self.loader.consumed_samples = start
                    raise died
                yield microbatches, {"u_max": self._u_max(step)}
        finally:
            it.close()  # the loader's workers stop now, not when the iterator is collected

    def _agree_on_loader(self, died: LoaderWorkerDied | None, rank: int) -> LoaderWorkerDied | None:
        """Under several ranks, one small all-reduce per step: a rank whose workers live gets a
        stand-in for another rank's ``LoaderWorkerDied``, so every rank stops at this step."""
        if dist.get_world_size() == 1:
            return died
        failed = torch.tensor([0 if died is None else rank + 1])
        host_collective(dist.all_reduce, failed, op=dist.ReduceOp.MAX)
        if died is None and failed.item():
            died = LoaderWorkerDied(f"a data loader worker of rank {int(failed.item()) - 1} died "
                                    "(that rank's message says which and why)")
        return died

    def _u_max(self, step: int) -> float:
        """The corruption warmup's cap on ``t`` at step ``step`` (0-based); 0 for an AR run."""
        if self.cfg.loss.objective == "ar":
            return 0.0
        return float(self.corruptor.u_max_at(step))

    def complete_record(self, run, record: dict) -> bool:
        """The held-out figures that are due."""
        tr = self.cfg.training
        if tr.eval_interval and tr.eval_iters and run.step % tr.eval_interval == 0:
            record["val_loss"], record["val_acc"] = self.held_out.validate(run.chunks)
        if tr.infill_eval_interval and run.step % tr.infill_eval_interval == 0:
            record.update(self.held_out.infill(run.chunks))
        return "val_loss" in record or any(k.startswith("infill_acc") for k in record)

    def progress(self, record: dict) -> dict:
        return {"loss": f"{record['loss']:.3f}", "lr": f"{record['lr']:.2e}",
                "tok/s": f"{record['tokens_per_s']:.0f}",
                **({"mfu": f"{record['mfu']:.1%}"} if "mfu" in record else {})}

    @property
    def consumed_samples(self) -> int:
        return self.loader.consumed_samples

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict | None, *, consumed_samples: int) -> None:
        if state is not None:
            self.loader.load_state_dict(state)
        else:  # resumed under another DP size: derive from the global sample count
            self.loader.consumed_samples = consumed_samples
