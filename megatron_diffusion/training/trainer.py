"""The training loop: CPT and SFT of a diffusion LM on megatron-core.

One ``Trainer`` per process (one process by default; torchrun/SLURM start many). Setup reads the
data store first (its vocabulary and special ids complete the model config; a mismatch with an
explicit config is an error before any work), then builds the model chunks (TP/PP/VPP), megatron
DDP and optimizer, the corrupting loaders, and resumes or initialises weights. Each step:

1. set the learning rate for the step (a pure function of it, ``lr_schedule``);
2. pull this DP rank's micro-batches (corrupted in the loader workers with the step's curriculum:
   corruption warmup, then mask stage, then edit stage for the last fraction of steps);
3. ``forward_backward`` (megatron pipeline schedule, per-token loss);
4. a non-finite loss skips the optimizer step with a warning (all ranks agree: the loss is
   reduced), ``max_nan_steps`` in a row stop the run; otherwise ``optimizer.step()`` (grad clip
   inside);
5. log, validate, checkpoint; a SIGTERM/SIGUSR2 received meanwhile saves and exits 0.
"""

import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_diffusion.config import RunConfig
from megatron_diffusion.corruption.factory import eval_corruption_config, make_corruptor
from megatron_diffusion.corruption.fixed_rate import FixedRateMasking
from megatron_diffusion.data.vocab import resolve_vocab, store_vocabulary
from megatron_diffusion.errors import UsageError
from megatron_diffusion.parallel.preemption import Preemption, clear_marker, write_marker

CHECKPOINT_FORMAT = "megatron-diffusion-checkpoint"


def _say_on_rank0(message: str) -> None:
    """A warning before torch.distributed is up (rank from the launcher's environment)."""
    import os
    import sys

    if os.environ.get("RANK", "0") == "0":
        print(f"--resume auto: {message}", file=sys.stderr, flush=True)


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir, *, resume: str = "none", init_from=None,
                 argv=None, overwrite: bool = False):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.resume, self.init_from, self.argv = resume, init_from, argv or []
        self.overwrite = overwrite

    # ------------------------------------------------------------------ setup
    def setup(self):
        """Build everything; the preemption handlers are installed first, so a SIGTERM/SIGUSR2
        during setup (the run dir exists, no step done) ends in ``train`` with PREEMPTED, exit 0."""
        self.preemption = Preemption().install()
        try:
            return self._setup()
        except BaseException:
            self.preemption.uninstall()
            raise

    def _setup(self):
        from megatron.core import parallel_state as ps
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        from megatron_diffusion.data.loader import DiffusionDataLoader, build_indices
        from megatron_diffusion.model.gpt import transformer_config
        from megatron_diffusion.parallel.process_groups import initialize_model_parallel
        from megatron_diffusion.training.model_setup import build_training_model

        cfg = self.cfg
        self.converted_from = self.generation = None
        init_meta = self._read_init_meta()  # adopts the checkpoint's architecture first
        self.stores = resolve_vocab(cfg)
        cfg.validate()
        if init_meta is not None:
            self._check_same_model(init_meta, self.init_from, "--init-from",
                                   ("add_qkv_bias", "untie_embeddings_and_output_weights"))
        resume_path = self._resume_path()
        if resume_path is not None:  # before anything is written
            from megatron_diffusion.training.checkpoint import read_meta

            self._check_same_model(read_meta(resume_path), resume_path, "--resume")
        par = cfg.parallel
        initialize_model_parallel(par.tensor_model_parallel_size, par.pipeline_model_parallel_size,
                                  par.virtual_pipeline_model_parallel_size, seed=cfg.training.seed,
                                  context_parallel_size=par.context_parallel_size)
        self.rank = dist.get_rank()
        self.dp_size, self.dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        cfg.data.check_data_parallel(self.dp_size)
        self.num_microbatches = cfg.data.global_batch_size // (cfg.data.micro_batch_size * self.dp_size)
        if par.virtual_pipeline_model_parallel_size and \
                self.num_microbatches % par.pipeline_model_parallel_size:
            raise UsageError("data.global_batch_size: interleaved pipelining needs the number of "
                             f"micro-batches ({self.num_microbatches}) to be a multiple of "
                             f"pipeline_model_parallel_size ({par.pipeline_model_parallel_size})")
        if self.rank == 0:
            try:
                if self.overwrite:  # the old run goes whole, before the new one writes anything
                    from megatron_diffusion.parallel.run_dir import remove_run

                    remove_run(self.run_dir)
                self.run_dir.mkdir(parents=True, exist_ok=True)
                clear_marker(self.run_dir)
                self._snapshot()
            except OSError as e:  # read-only, full, a file in the way
                raise UsageError(f"--run-dir: cannot write {e.filename or self.run_dir} "
                                 f"({e.strerror})") from None
        tcfg = transformer_config(cfg.model, tensor_model_parallel_size=par.tensor_model_parallel_size,
                                  pipeline_model_parallel_size=par.pipeline_model_parallel_size,
                                  virtual_pipeline_model_parallel_size=par.virtual_pipeline_model_parallel_size,
                                  sequence_parallel=par.sequence_parallel,
                                  recompute=par.recompute_activations)
        self.chunks = build_training_model(cfg.model, tcfg,
                                           use_distributed_optimizer=par.use_distributed_optimizer)
        if cfg.training.layout_independent_init:
            from megatron_diffusion.model.weights import seeded_init
            from megatron_diffusion.training.model_setup import unwrap

            seeded_init(unwrap(self.chunks), cfg.training.seed, cfg.model.init_method_std)
        opt = cfg.optimizer
        dtype = torch.bfloat16 if cfg.model.params_dtype == "bfloat16" else torch.float32
        self.optimizer = get_megatron_optimizer(OptimizerConfig(
            optimizer="adam", lr=opt.lr, min_lr=opt.min_lr, weight_decay=opt.weight_decay,
            adam_beta1=opt.adam_beta1, adam_beta2=opt.adam_beta2, adam_eps=opt.adam_eps,
            clip_grad=opt.clip_grad, bf16=dtype == torch.bfloat16, params_dtype=dtype,
            use_distributed_optimizer=par.use_distributed_optimizer), self.chunks)
        self.num_params = sum(p.numel() for c in self.chunks for p in c.parameters())
        if dist.is_initialized():
            t = torch.tensor([self.num_params], dtype=torch.long)
            dist.all_reduce(t, group=ps.get_pipeline_model_parallel_group())
            dist.all_reduce(t, group=ps.get_tensor_model_parallel_group())
            self.num_params = int(t.item())

        store = self.stores[0]
        self.corruptor = make_corruptor(cfg, **store_vocabulary(store))
        # validation measures the objective itself (the ELBO): post-warmup, mask stage
        self.val_corruptor = make_corruptor(eval_corruption_config(cfg), **store_vocabulary(store))
        total_samples = cfg.training.train_iters * cfg.data.global_batch_size
        if self.rank == 0:
            build_indices(cfg.data, total_samples)
        dist.barrier()
        self.loader = DiffusionDataLoader(cfg.data, data_parallel_rank=self.dp_rank,
                                          data_parallel_size=self.dp_size,
                                          corrupt_fn=self.corruptor.corrupt,
                                          tokenizer_hash=store.tokenizer_hash,
                                          vocab_size=store.vocab_size)
        import dataclasses

        # validation and infill evaluation read the store's validation split, one micro-batch
        # per DP rank at a time, in the training process
        self.val_cfg = dataclasses.replace(cfg.data, split="validation", num_workers=0,
                                           global_batch_size=cfg.data.micro_batch_size * self.dp_size)
        self._check_validation_split()
        self.step = 0
        if resume_path is not None:
            self._load(resume_path)
        elif self.init_from is not None:
            from megatron_diffusion.training.checkpoint import load_checkpoint

            load_checkpoint(self.init_from, self.chunks)  # weights only (CPT from AR)
        self.tokenizer_path = cfg.training.tokenizer or self._store_tokenizer()
        return self

    def _read_init_meta(self):
        """``--init-from``'s meta.json; its architecture fields fill this run's unset ones."""
        if self.init_from is None:
            return None
        from megatron_diffusion.model.loading import resolve_checkpoint
        from megatron_diffusion.training.checkpoint import read_meta
        from megatron_diffusion.training.init_from import adopt_model_config

        self.init_from = resolve_checkpoint(self.init_from, option="--init-from")
        meta = read_meta(self.init_from)
        adopt_model_config(self.cfg, meta, self.init_from)
        self.converted_from = meta.get("converted_from")  # the HF export keeps its origin
        self.generation = meta.get("generation")  # stop tokens, chat template (conversion)
        return meta

    def _check_validation_split(self) -> None:
        """Validation and infill evaluation need validation rows: find out now, not after the
        steps (opening the split builds its packing plan, or says why there is none)."""
        tr = self.cfg.training
        if not ((tr.eval_interval and tr.eval_iters) or tr.infill_eval_interval):
            return
        from megatron_diffusion.data.loader import PackedDataset

        try:
            PackedDataset(self.val_cfg, None, self.stores[0].tokenizer_hash, self.stores[0].vocab_size)
        except UsageError as e:
            raise UsageError(f"training.eval_interval/infill_eval_interval: no validation data "
                             f"({e}); preprocess with --validation-fraction > 0 or set both "
                             "to 0") from None

    def _store_tokenizer(self):
        p = Path(self.stores[0].path) / "tokenizer.json"
        return str(p) if p.is_file() else None

    def _resume_path(self):
        from megatron_diffusion.training.checkpoint import (has_checkpoints,
                                                            newest_loadable_checkpoint)

        if self.overwrite and self.resume != "none":
            raise UsageError(f"--overwrite: replaces the run in {self.run_dir}, it cannot be "
                             f"combined with --resume {self.resume}")
        if self.resume == "none" and not self.overwrite and has_checkpoints(self.run_dir):
            raise UsageError(f"--run-dir: {self.run_dir} holds checkpoints of an earlier run; "
                             "pass --resume auto to continue it or --overwrite to replace it")
        if self.resume == "none":
            return None
        if self.resume == "auto":  # a damaged newest checkpoint: the newest that loads
            return newest_loadable_checkpoint(self.run_dir, say=_say_on_rank0)
        path = Path(self.resume)
        if not (path / "meta.json").is_file():
            raise UsageError(f"--resume: {path} is not a complete checkpoint (no meta.json)")
        from megatron_diffusion.training.checkpoint import checkpoint_problem

        problem = checkpoint_problem(path)  # before anything is written
        if problem is not None:
            raise UsageError(f"--resume: {problem}")
        return path

    SHAPE_KEYS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                  "ffn_hidden_size", "vocab_size")

    def _check_same_model(self, meta, path, option: str, extra_keys=()) -> None:
        """Refuse a checkpoint whose model differs from this run's, naming the field."""
        theirs = meta["config"]["model"]
        for key in self.SHAPE_KEYS + tuple(extra_keys):
            if theirs.get(key) != getattr(self.cfg.model, key):
                raise UsageError(f"{option}: checkpoint {path} has model.{key}="
                                 f"{theirs.get(key)!r}, this run has {getattr(self.cfg.model, key)!r}")

    def _load(self, path):
        from megatron_diffusion.training.checkpoint import (load_checkpoint, load_loader_state,
                                                            restore_rng)

        meta = load_checkpoint(path, self.chunks, self.optimizer)
        self.step = int(meta["step"])
        self.converted_from = meta.get("converted_from", self.converted_from)
        self.generation = meta.get("generation", self.generation)
        state = load_loader_state(path)
        if state is not None:
            self.loader.load_state_dict(state)
        else:  # resumed under another DP size: derive from the global sample count
            self.loader.consumed_samples = int(meta["consumed_samples"])
        restore_rng(path)

    def _snapshot(self):
        import yaml

        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        try:
            from megatron_diffusion.parallel.run_dir import snapshot_run

            snapshot_run(self.run_dir, self.cfg.to_dict(), self.argv)
        except ImportError:
            pass

    # ------------------------------------------------------------------ loop
    def _next_microbatches(self, it):
        return [next(it) for _ in range(self.num_microbatches)]

    def _set_lr(self, lr):
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _zero_grads(self):
        for c in self.chunks:
            c.zero_grad_buffer()
        self.optimizer.zero_grad()

    def train(self) -> int:
        from megatron_diffusion.training.lr_schedule import lr_at
        from megatron_diffusion.training.observability import (
            RunLogger,
            attended_pairs,
            flops_per_token,
            peak_flops,
        )
        from megatron_diffusion.training.finite import grads_finite
        from megatron_diffusion.training.step import forward_backward

        cfg, tr = self.cfg, self.cfg.training
        logger = RunLogger(self.run_dir, enabled=self.rank == 0, total_steps=tr.train_iters,
                           start_step=self.step, wandb_mode=tr.wandb, wandb_project=tr.wandb_project,
                           config=cfg.to_dict(), tensorboard=tr.tensorboard)
        flag = getattr(self, "preemption", None) or Preemption().install()
        seq = cfg.data.seq_len * (2 if cfg.attention.mode == "block" else 1)
        tokens_per_step = cfg.data.global_batch_size * seq
        # attention FLOPs of the pairs the mask allows (one-document rows: isolated packing's
        # upper bound), not the dense S x S a block-mode row never computes in full
        pairs = attended_pairs(cfg.attention, torch.zeros(1, cfg.data.seq_len, dtype=torch.long))
        flops_step = flops_per_token(self.num_params, cfg.model.num_layers, cfg.model.hidden_size,
                                     seq, attended_pairs=pairs) * tokens_per_step
        peak = peak_flops()
        world = dist.get_world_size()
        nan_in_a_row, it, exit_code = 0, iter(self.loader), 0
        last_saved = self.step if self.resume != "none" else -1
        first_step = self.step
        try:
            if flag.should_stop():  # signalled during setup: requeue without a step
                logger.write(f"preemption signal during setup: exiting at step {self.step}")
                if self.rank == 0:
                    write_marker(self.run_dir, str(self.step))
                return 0
            while self.step < tr.train_iters:
                t0 = time.perf_counter()
                lr = lr_at(self.step, lr=cfg.optimizer.lr, min_lr=cfg.optimizer.min_lr,
                           warmup_steps=cfg.optimizer.lr_warmup_steps, total_steps=tr.train_iters,
                           style=cfg.optimizer.lr_decay_style,
                           wsd_decay_fraction=cfg.optimizer.wsd_decay_fraction)
                self._set_lr(lr)
                self._zero_grads()
                mbs = self._next_microbatches(it)
                res = forward_backward(self.chunks, mbs, cfg.attention, cfg.loss,
                                       logit_shift=cfg.model.logit_shift,
                                       backend=cfg.model.attention_backend)
                bad = None if math.isfinite(res["loss"]) else f"non-finite loss {res['loss']}"
                if bad is None and not grads_finite(self.chunks):  # all ranks agree
                    bad = "non-finite gradient (finite loss)"
                if bad is not None:  # steps are numbered from 1, as in metrics.jsonl
                    nan_in_a_row += 1
                    logger.write(f"step {self.step + 1}: {bad}, step skipped "
                                 f"({nan_in_a_row}/{tr.max_nan_steps} in a row)")
                    if nan_in_a_row > tr.max_nan_steps:
                        raise RuntimeError(f"{nan_in_a_row} non-finite steps in a row at step "
                                           f"{self.step + 1}; stopping (training.max_nan_steps="
                                           f"{tr.max_nan_steps}). Lower optimizer.lr or check data.")
                    self.step += 1
                    continue
                nan_in_a_row = 0
                ok, grad_norm, _ = self.optimizer.step()
                self.step += 1
                dt = time.perf_counter() - t0
                stage = mbs[0].stage
                record = {"step": self.step, "loss": res["loss"], "ce": res["ce"], "lr": lr,
                          "grad_norm": float(grad_norm) if grad_norm is not None else None,
                          "tokens_per_s": tokens_per_step / dt, "step_time_s": dt,
                          "stage": stage, "u_max": self._u_max(self.step - 1)}
                if peak:
                    record["mfu"] = flops_step / dt / (peak * world)
                if tr.eval_interval and tr.eval_iters and self.step % tr.eval_interval == 0:
                    record["val_loss"], record["val_acc"] = self.validate()
                if tr.infill_eval_interval and self.step % tr.infill_eval_interval == 0:
                    record.update(self.infill_eval())
                if self.step % tr.log_interval == 0 or self.step == tr.train_iters or \
                        "val_loss" in record or any(k.startswith("infill_acc") for k in record):
                    logger.log(record)
                logger.progress(self.step, {"loss": f"{res['loss']:.3f}", "lr": f"{lr:.2e}",
                                            "tok/s": f"{record['tokens_per_s']:.0f}",
                                            **({"mfu": f"{record['mfu']:.1%}"} if peak else {})})
                preempt = flag.should_stop()
                exit_now = tr.exit_interval > 0 and self.step - first_step >= tr.exit_interval
                if preempt or exit_now or (tr.save_interval and self.step % tr.save_interval == 0):
                    self.save()
                    last_saved = self.step
                if preempt:  # the batch script requeues the job when it finds the marker
                    logger.write(f"preemption signal: saved step {self.step}, exiting")
                    if self.rank == 0:
                        write_marker(self.run_dir, str(self.step))
                    return 0
                if exit_now and self.step < tr.train_iters:
                    logger.write(f"exit_interval reached: saved step {self.step}, exiting")
                    return 0
            if last_saved != self.step:
                self.save()
        finally:
            flag.uninstall()
            logger.close()
        return exit_code

    def _u_max(self, step):
        if self.cfg.loss.objective == "ar":
            return 0.0
        return float(self.corruptor.u_max_at(step))

    @torch.no_grad()
    def _evaluate(self, corrupt_fn, loss_cfg) -> dict:
        """Forward-only over ``eval_iters`` validation micro-batches (the same ones every time:
        a fresh loader from sample 0, per-sample seeds as in training)."""
        from megatron_diffusion.data.loader import DiffusionDataLoader
        from megatron_diffusion.training.step import forward_backward

        for c in self.chunks:
            c.eval()
        loader = DiffusionDataLoader(self.val_cfg, data_parallel_rank=self.dp_rank,
                                     data_parallel_size=self.dp_size, corrupt_fn=corrupt_fn,
                                     tokenizer_hash=self.stores[0].tokenizer_hash,
                                     vocab_size=self.stores[0].vocab_size)
        it = iter(loader)
        n = max(self.cfg.training.eval_iters, self.cfg.parallel.pipeline_model_parallel_size)
        batches = [next(it) for _ in range(n)]
        res = forward_backward(self.chunks, batches, self.cfg.attention, loss_cfg,
                               logit_shift=self.cfg.model.logit_shift, forward_only=True,
                               backend=self.cfg.model.attention_backend)
        for c in self.chunks:
            c.train()
        return res

    def validate(self) -> tuple[float, float]:
        """Validation loss (the training objective) and accuracy at its loss positions."""
        res = self._evaluate(self.val_corruptor.corrupt, self.cfg.loss)
        return res["loss"], res["acc"]

    def infill_eval(self, rates=(0.15, 0.5, 0.9)) -> dict:
        """``eval infill``'s masked-token accuracy at fixed rates, on the validation split."""
        from megatron_diffusion.loss.config import LossConfig

        attn = self.cfg.attention
        if attn.mode == "causal":
            return {}
        out = {}
        for r in rates:
            fn = FixedRateMasking(r, mask_token_id=self.cfg.model.mask_token_id,
                                  block_size=attn.block_size if attn.mode == "block" else None,
                                  visibility=attn.visibility).corrupt
            out[f"infill_acc@{r}"] = self._evaluate(fn, LossConfig())["acc"]
        return out

    def save(self):
        from megatron_diffusion.training.checkpoint import save_checkpoint

        meta = {"format": CHECKPOINT_FORMAT, "format_version": 1, "config": self.cfg.to_dict(),
                "tokenizer_hash": self.stores[0].tokenizer_hash,
                "consumed_samples": self.loader.consumed_samples,
                "parallel": {"tensor_model_parallel_size": self.cfg.parallel.tensor_model_parallel_size,
                             "pipeline_model_parallel_size": self.cfg.parallel.pipeline_model_parallel_size,
                             "context_parallel_size": self.cfg.parallel.context_parallel_size,
                             "data_parallel_size": self.dp_size}}
        if self.converted_from:
            meta["converted_from"] = self.converted_from
        if self.generation:
            meta["generation"] = self.generation
        save_checkpoint(self.run_dir, self.step, self.chunks, self.optimizer, meta=meta,
                        loader_state=self.loader.state_dict(), tokenizer_path=self.tokenizer_path,
                        keep_last=self.cfg.training.keep_last)
