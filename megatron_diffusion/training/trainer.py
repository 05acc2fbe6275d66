"""The training loop of a diffusion LM on megatron-core, for any step source.

One ``Trainer`` per process (torchrun/SLURM start many). ``setup`` completes and checks the
config (the store's vocabulary, ``--init-from``'s architecture, the checkpoint to resume), starts
the parallel state, builds the source's data, writes the run directory, builds the model chunks
and Adam, and restores. Each step: the step's learning rate, the source's micro-batches through
``train_step.TrainStep`` (forward/backward, non-finite guard, optimizer step), the source's
figures, log, checkpoint; SIGTERM/SIGUSR2 saves and exits 0. What a step consumes is the step
source's (``step_source``). docs/training.md has each part; docs/reliability.md the faults.
"""

import contextlib
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from megatron.core import parallel_state as ps
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

from megatron_diffusion.config import RunConfig
from megatron_diffusion.data.loader import LoaderWorkerDied
from megatron_diffusion.data.vocab import check_checkpoint_store, resolve_vocab
from megatron_diffusion.errors import UsageError
from megatron_diffusion.model.config import ModelConfig
from megatron_diffusion.model.gpt import transformer_config
from megatron_diffusion.model.weights import seeded_init
from megatron_diffusion.parallel.peer_failure import PeerLost, PeerTable, describe_peer_failure
from megatron_diffusion.parallel.preemption import Preemption, clear_marker, write_marker
from megatron_diffusion.parallel.process_groups import host_collective, initialize_model_parallel
from megatron_diffusion.parallel.run_dir import lock_run, remove_run, snapshot_run, unlock_run
from megatron_diffusion.training.checkpoint import (agree_on_checkpoint, checkpoint_meta,
                                                    checkpoint_problem, has_checkpoints,
                                                    load_checkpoint, load_loader_state,
                                                    newest_loadable_checkpoint, read_meta,
                                                    resolve_checkpoint, restore_rng,
                                                    save_checkpoint)
from megatron_diffusion.training.init_from import adopt_model_config, adopt_spare_rows
from megatron_diffusion.training.lr_schedule import lr_at
from megatron_diffusion.training.model_setup import build_training_model, unwrap
from megatron_diffusion.training.observability import RunLogger
from megatron_diffusion.training.forward_backward import ForwardSpec
from megatron_diffusion.training.step_source import StepSource
from megatron_diffusion.training.train_step import TrainStep


def say_on_rank0(message: str) -> None:
    """A line on rank 0, also before torch.distributed is up (the launcher's ``RANK``)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


def _say_on_rank0(message: str) -> None:
    """What ``--resume auto`` found choosing its checkpoint."""
    say_on_rank0(f"--resume auto: {message}")


class Trainer:
    """One run on this process: ``Trainer(cfg, run_dir, source, ...).setup().train()`` -> exit
    code. ``source``: the run's ``StepSource`` (of the same ``cfg``)."""

    def __init__(self, cfg: RunConfig, run_dir, source: StepSource, *, resume: str = "none",
                 init_from=None, argv=None, overwrite: bool = False):
        self.cfg, self.run_dir, self.source = cfg, Path(run_dir), source
        self.resume, self.init_from, self.argv = resume, init_from, argv or []
        self.overwrite = overwrite
        self.preempted = False
        """Set when the run stopped on a preemption signal (``_preempted``), on every rank."""
        self.resume_notes = []
        """What ``--resume auto`` found choosing its checkpoint (``agree_on_checkpoint``)."""

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
        self.converted_from = self.generation = None
        resume_path = self._read_config()
        self._init_parallel()
        self._build_data()  # refusals about the data: before anything is written
        self.on_rank0_agreed(self._prepare_run_dir)
        self._build_model_and_optimizer()
        self.source.build_models(self)
        self._restore(resume_path)
        return self

    def _read_config(self):
        """Complete and check the run config before anything is written; returns the checkpoint
        to resume from, or None."""
        init_meta = self._read_init_meta()  # adopts the checkpoint's architecture first
        self.stores = resolve_vocab(self.cfg)
        self.cfg.validate()
        if init_meta is not None:
            adopt_spare_rows(self.cfg, init_meta, self.stores[0])
            self._check_same_model(init_meta, self.init_from, "--init-from",
                                   ("add_qkv_bias", "qk_layernorm",
                                    "untie_embeddings_and_output_weights"))
            check_checkpoint_store(init_meta, self.init_from, self.stores[0], "--init-from")
        resume_path = self._resume_path()
        if resume_path is not None:  # before anything is written
            meta = read_meta(resume_path)
            adopt_spare_rows(self.cfg, meta, self.stores[0])
            self._check_same_model(meta, resume_path, "--resume")
            check_checkpoint_store(meta, resume_path, self.stores[0], "--resume")
        self.source.check(self, resume_path)
        return resume_path

    def _init_parallel(self) -> None:
        cfg, par = self.cfg, self.cfg.parallel
        initialize_model_parallel(par.tensor_model_parallel_size, par.pipeline_model_parallel_size,
                                  par.virtual_pipeline_model_parallel_size, seed=cfg.training.seed,
                                  context_parallel_size=par.context_parallel_size,
                                  collective_timeout_s=par.collective_timeout_s)
        self.rank = dist.get_rank()
        self.peers = PeerTable.gather()  # who runs where, to name a lost peer
        self.dp_size, self.dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        cfg.data.check_data_parallel(self.dp_size)
        self.num_microbatches = cfg.data.global_batch_size // (cfg.data.micro_batch_size * self.dp_size)
        if par.virtual_pipeline_model_parallel_size and \
                self.num_microbatches % par.pipeline_model_parallel_size:
            raise UsageError("data.global_batch_size: interleaved pipelining needs the number of "
                             f"micro-batches ({self.num_microbatches}) to be a multiple of "
                             f"pipeline_model_parallel_size ({par.pipeline_model_parallel_size})")

    def on_rank0_agreed(self, work, what: str = "--run-dir: rank 0 could not prepare the run "
                                                "directory") -> None:
        """``work()`` on rank 0; every rank raises if it failed (one ``UsageError``; on the
        other ranks ``what``), instead of the other ranks waiting for rank 0 in their next
        collective. The all-reduce is also the barrier after ``work``."""
        error = None
        if self.rank == 0:
            try:
                work()
            except UsageError as e:
                error = e
        failed = torch.tensor([float(error is not None)])
        if dist.is_initialized() and dist.get_world_size() > 1:
            host_collective(dist.all_reduce, failed, op=dist.ReduceOp.MAX)
        if failed.item():
            raise error or UsageError(f"{what} (its log has the reason)")

    def _prepare_run_dir(self) -> None:
        try:
            lock_run(self.run_dir)  # before anything is written or removed
            if self.overwrite:  # the old run goes whole, before the new one writes anything
                remove_run(self.run_dir)
                unlock_run(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            lock_run(self.run_dir)  # the new directory's (a no-op without --overwrite)
            clear_marker(self.run_dir)
            self._snapshot()
        except OSError as e:  # read-only, full, a file in the way
            raise UsageError(f"--run-dir: cannot write {e.filename or self.run_dir} "
                             f"({e.strerror})") from None

    def _build_model_and_optimizer(self) -> None:
        cfg, par = self.cfg, self.cfg.parallel
        tcfg = transformer_config(cfg.model, tensor_model_parallel_size=par.tensor_model_parallel_size,
                                  pipeline_model_parallel_size=par.pipeline_model_parallel_size,
                                  virtual_pipeline_model_parallel_size=par.virtual_pipeline_model_parallel_size,
                                  sequence_parallel=par.sequence_parallel,
                                  recompute=par.recompute_activations)
        self.chunks = build_training_model(cfg.model, tcfg,
                                           use_distributed_optimizer=par.use_distributed_optimizer)
        if cfg.training.layout_independent_init:
            seeded_init(unwrap(self.chunks), cfg.training.seed, cfg.model.init_method_std)
        self.optimizer = get_megatron_optimizer(self._optimizer_config(), self.chunks)
        self.num_params = self._count_params()

    def _optimizer_config(self) -> OptimizerConfig:
        opt = self.cfg.optimizer
        dtype = torch.bfloat16 if self.cfg.model.params_dtype == "bfloat16" else torch.float32
        return OptimizerConfig(
            optimizer="adam", lr=opt.lr, min_lr=opt.min_lr, weight_decay=opt.weight_decay,
            adam_beta1=opt.adam_beta1, adam_beta2=opt.adam_beta2, adam_eps=opt.adam_eps,
            clip_grad=opt.clip_grad, bf16=dtype == torch.bfloat16, params_dtype=dtype,
            use_distributed_optimizer=self.cfg.parallel.use_distributed_optimizer)

    def _count_params(self) -> int:
        """Parameters of the whole model (summed over pipeline and tensor-parallel ranks)."""
        n = sum(p.numel() for c in self.chunks for p in c.parameters())
        if dist.is_initialized():
            t = torch.tensor([n], dtype=torch.long)
            dist.all_reduce(t, group=ps.get_pipeline_model_parallel_group())
            dist.all_reduce(t, group=ps.get_tensor_model_parallel_group())
            n = int(t.item())
        return n

    def _build_data(self) -> None:
        self.spec = ForwardSpec.of(self.cfg)
        self.source.build(self)

    def _restore(self, resume_path) -> None:
        self.step = 0
        if self.resume != "none":  # every rank checked its share of the files: agree on one
            resume_path = agree_on_checkpoint(resume_path, self.run_dir, _say_on_rank0,
                                              fall_back=self.resume == "auto",
                                              notes=self.resume_notes)
        if resume_path is not None:
            self._load(resume_path)
        elif self.init_from is not None:
            load_checkpoint(self.init_from, self.chunks)  # weights only (CPT from AR)
        self.tokenizer_path = self.cfg.training.tokenizer or self._store_tokenizer()

    def _read_init_meta(self):
        """``--init-from``'s meta.json; its architecture fields fill this run's unset ones."""
        if self.init_from is None:
            return None
        self.init_from = resolve_checkpoint(self.init_from, option="--init-from")
        meta = read_meta(self.init_from)
        adopt_model_config(self.cfg, meta, self.init_from)
        self.converted_from = meta.get("converted_from")  # the HF export keeps its origin
        self.generation = meta.get("generation")  # stop tokens, chat template (conversion)
        return meta

    def _store_tokenizer(self):
        return self.stores[0].tokenizer_file  # a zarr store's copy, or data.tokenizer

    def _resume_note(self, message: str) -> None:
        """Said on rank 0; kept on every rank for ``agree_on_checkpoint``."""
        self.resume_notes.append(message)
        _say_on_rank0(message)

    def _resume_path(self):
        if self.overwrite and self.resume != "none":
            raise UsageError(f"--overwrite: replaces the run in {self.run_dir}, it cannot be "
                             f"combined with --resume {self.resume}")
        if self.resume == "none" and not self.overwrite and has_checkpoints(self.run_dir):
            raise UsageError(f"--run-dir: {self.run_dir} holds checkpoints of an earlier run; "
                             "pass --resume auto to continue it or --overwrite to replace it")
        if self.resume == "none":
            return None
        if self.resume == "auto":  # a damaged newest checkpoint: the newest that loads
            return newest_loadable_checkpoint(self.run_dir, say=self._resume_note)
        path = Path(self.resume)
        if not (path / "meta.json").is_file():
            raise UsageError(f"--resume: {path} is not a complete checkpoint (no meta.json)")
        problem = checkpoint_problem(path)  # before anything is written
        if problem is not None:
            raise UsageError(f"--resume: {problem}")
        return path

    SHAPE_KEYS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                  "ffn_hidden_size", "vocab_size")

    def _check_same_model(self, meta, path, option: str, extra_keys=()) -> None:
        """Refuse a checkpoint whose model differs from this run's, naming the field."""
        theirs = meta["config"]["model"]
        defaults = ModelConfig()  # a field newer than the checkpoint: what loading it gives
        for key in self.SHAPE_KEYS + tuple(extra_keys):
            value = theirs.get(key, getattr(defaults, key))
            if value != getattr(self.cfg.model, key):
                raise UsageError(f"{option}: checkpoint {path} has model.{key}="
                                 f"{value!r}, this run has {getattr(self.cfg.model, key)!r}")

    def _load(self, path):
        meta = load_checkpoint(path, self.chunks, self.optimizer, verified=True)
        self.step = int(meta["step"])
        self.converted_from = meta.get("converted_from", self.converted_from)
        self.generation = meta.get("generation", self.generation)
        self.source.load_state_dict(load_loader_state(path),
                                    consumed_samples=int(meta["consumed_samples"]))
        restore_rng(path)
        if self.rank == 0:  # a resume says what it continues, not only when it had to step back
            print(f"--resume {self.resume}: continuing from {path} (step {self.step} of "
                  f"{self.cfg.training.train_iters})", file=sys.stderr, flush=True)

    def _snapshot(self):
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        snapshot_run(self.run_dir, self.cfg.to_dict(), self.argv)

    # ------------------------------------------------------------------ loop
    def train(self) -> int:
        tr = self.cfg.training
        logger = RunLogger(self.run_dir, enabled=self.rank == 0, total_steps=tr.train_iters,
                           start_step=self.step, wandb_mode=tr.wandb, wandb_project=tr.wandb_project,
                           config=self.cfg.to_dict(), tensorboard=tr.tensorboard)
        flag = getattr(self, "preemption", None) or Preemption().install()
        step_fn = self._train_step(logger)
        self.last_saved = self.step if self.resume != "none" else -1
        self.first_step = self.step
        try:
            if flag.should_stop():  # signalled during setup: requeue without a step
                return self._preempted(logger, f"preemption signal during setup: exiting at "
                                               f"step {self.step}")
            return self._loop(step_fn, logger, flag)
        except RuntimeError as e:  # gloo's and NCCL's errors; a lost peer becomes one line
            lost = describe_peer_failure(e, self.peers, self.cfg.parallel.collective_timeout_s)
            if lost is None:
                raise
            raise PeerLost(f"{lost}, during step {self.step + 1}; {self._last_checkpoint()}") \
                from None
        finally:
            flag.uninstall()
            logger.close()

    def _train_step(self, logger: RunLogger) -> TrainStep:
        return TrainStep(self.chunks, self.optimizer, self.spec, self.source.cost(self),
                         max_nan_steps=self.cfg.training.max_nan_steps, say=logger.write,
                         run=self.source.forward_backward)

    def _loop(self, step_fn: TrainStep, logger: RunLogger, flag: Preemption) -> int:
        with contextlib.closing(self.source.steps(self, self.step)) as inputs:
            return self._steps(step_fn, logger, flag, inputs)

    def _steps(self, step_fn: TrainStep, logger: RunLogger, flag: Preemption, inputs) -> int:
        tr = self.cfg.training
        while self.step < tr.train_iters:
            t0 = time.perf_counter()
            lr = self._lr_at(self.step)
            try:
                microbatches, figures = next(inputs)
            except LoaderWorkerDied as e:
                raise self._loader_died(e) from None
            record = step_fn(microbatches, step=self.step + 1, lr=lr, started=t0)
            self.step += 1
            if record is None:  # skipped: non-finite
                continue
            self._report({**record, **figures}, logger)
            code = self._save_or_exit(logger, flag)
            if code is not None:
                return code
        if self.last_saved != self.step:
            self.save()
        return 0

    def _loader_died(self, died: LoaderWorkerDied) -> LoaderWorkerDied:
        """Save the last completed step (every rank stopped before the next, the loader is back
        at its end); the one-line error to stop with."""
        if self.step > 0 and self.last_saved != self.step:
            self.save()
            self.last_saved = self.step
            return LoaderWorkerDied(f"{died}; saved step {self.step}, --resume auto continues "
                                    "from it")
        return LoaderWorkerDied(f"{died}; --resume auto continues from step {self.step}")

    def _last_checkpoint(self) -> str:
        if self.last_saved <= 0:  # nothing saved, or --resume auto found nothing to resume
            return "no checkpoint of this run yet"
        return f"the last checkpoint (step {self.last_saved}) is intact: --resume auto continues from it"

    def _lr_at(self, step: int) -> float:
        opt = self.cfg.optimizer
        return lr_at(step, lr=opt.lr, min_lr=opt.min_lr, warmup_steps=opt.lr_warmup_steps,
                     total_steps=self.cfg.training.train_iters, style=opt.lr_decay_style,
                     wsd_decay_fraction=opt.wsd_decay_fraction)

    def _report(self, record: dict, logger: RunLogger) -> None:
        """Add the source's figures that are due, log the record when due, draw the progress."""
        tr = self.cfg.training
        due = self.source.complete_record(self, record)
        if due or self.step % tr.log_interval == 0 or self.step == tr.train_iters:
            logger.log(record)
        logger.progress(self.step, self.source.progress(record))

    def _save_or_exit(self, logger: RunLogger, flag: Preemption) -> int | None:
        """Checkpoint when due; the exit code when the run stops here (preempted,
        ``exit_interval``), else None."""
        tr = self.cfg.training
        preempt = flag.should_stop()
        exit_now = tr.exit_interval > 0 and self.step - self.first_step >= tr.exit_interval
        if preempt or exit_now or (tr.save_interval and self.step % tr.save_interval == 0):
            self.save()
            self.last_saved = self.step
        if preempt:
            return self._preempted(logger, f"preemption signal: saved step {self.step}, exiting")
        if exit_now and self.step < tr.train_iters:
            logger.write(f"exit_interval reached: saved step {self.step}, exiting")
            return 0
        return None

    def _preempted(self, logger: RunLogger, message: str) -> int:
        """Exit 0 with the marker the batch script requeues the job on."""
        self.preempted = True  # a multi-phase run stops here, whatever step this is
        logger.write(message)
        if self.rank == 0:
            write_marker(self.run_dir, str(self.step))
        return 0

    def save(self):
        save_checkpoint(self.run_dir, self.step, self.chunks, self.optimizer, meta=self.meta(),
                        loader_state=self.source.state_dict(), tokenizer_path=self.tokenizer_path,
                        keep_last=self.cfg.training.keep_last)

    def meta(self) -> dict:
        """The checkpoint's meta.json (``checkpoint_meta`` and what the run carries through)."""
        par = self.cfg.parallel
        meta = checkpoint_meta(
            self.cfg, tokenizer_hash=self.stores[0].tokenizer_hash,
            consumed_samples=self.source.consumed_samples,
            parallel={"tensor_model_parallel_size": par.tensor_model_parallel_size,
                      "pipeline_model_parallel_size": par.pipeline_model_parallel_size,
                      "context_parallel_size": par.context_parallel_size,
                      "data_parallel_size": self.dp_size})
        if self.converted_from:
            meta["converted_from"] = self.converted_from
        if self.generation:
            meta["generation"] = self.generation
        meta.update(self.source.meta(self))
        return meta
