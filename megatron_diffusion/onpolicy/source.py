"""The ``onpolicy`` step source: Seed Diffusion 3.3's step reduction on the model's own samples.

``training.step_source: onpolicy`` runs ``training.trainer.Trainer`` with ``OnPolicySource`` as
what each step consumes. Each step: ``onpolicy.prompts_per_step`` prompts (a seeded permutation
per epoch, a pure function of the step, split over data-parallel ranks); ``group_size``
trajectories per prompt from the block sampler on the current weights; their rewards (the dense
step surrogate and the verifier's score) and group-relative advantages; the trajectories as rows
(``rows``) through the policy-gradient forward/backward (``loss``) with the frozen reference's
log-probabilities for the KL anchor. The reference is ``--init-from``'s checkpoint, also on
resume. docs/onpolicy.md has the steps, the metrics and the settings.
"""

import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_diffusion.data.tokenizer import load_tokenizer
from megatron_diffusion.distill.row_model import RowModel
from megatron_diffusion.errors import UsageError
from megatron_diffusion.evaluation.executor import ExecutorConfig
from megatron_diffusion.model.gpt import build_model
from megatron_diffusion.model.inference import LoadedModel
from megatron_diffusion.onpolicy import rollout
from megatron_diffusion.onpolicy.choice import CommitRule
from megatron_diffusion.onpolicy.loss import PolicyBatch, policy_forward_backward, reference_logp
from megatron_diffusion.onpolicy.objective import group_advantages
from megatron_diffusion.onpolicy.prompts import read_prompts
from megatron_diffusion.onpolicy.rows import Trajectory, fill_prompt, micro_batches, policy_rows
from megatron_diffusion.onpolicy.verifiers import ExecutionVerifier, ModelVerifier
from megatron_diffusion.parallel.process_groups import host_collective
from megatron_diffusion.sampling.api import stop_token_ids
from megatron_diffusion.sampling.sampler import ModelRules
from megatron_diffusion.training.checkpoint import load_checkpoint, read_meta
from megatron_diffusion.training.model_setup import unwrap
from megatron_diffusion.training.step_source import StepSource
from megatron_diffusion.training.train_step import StepCost

class PromptStream:
    """Which prompts step ``s`` takes: positions ``[s * n, (s + 1) * n)`` of the concatenated
    per-epoch permutations (seeded), this data-parallel rank's contiguous share of them."""

    def __init__(self, num_prompts: int, per_step: int, *, seed: int, dp_rank: int, dp_size: int):
        """``per_step``: a multiple of ``dp_size`` (``OnPolicySource.build`` checks)."""
        self.num, self.per_step, self.seed = num_prompts, per_step, seed
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.consumed_samples = 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num)

    def take(self, step: int) -> list[int]:
        share = self.per_step // self.dp_size
        first = step * self.per_step + self.dp_rank * share
        return [int(self._order(g // self.num)[g % self.num]) for g in range(first, first + share)]

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict) -> None:
        self.consumed_samples = int(state["consumed_samples"])


class OnPolicySource(StepSource):
    """Trajectories sampled from the policy, scored and turned into policy-gradient rows."""

    def check(self, run, resume_path) -> None:
        """``--init-from`` given, the same reference on resume, the prompts readable and fitting
        a loss row: before the run directory is written."""
        if run.init_from is None:
            raise UsageError("--init-from: an on-policy run improves a trained model; give its "
                             "checkpoint (it is also the frozen reference)")
        self.reference_path = Path(run.init_from)
        if resume_path is not None:
            theirs = read_meta(resume_path).get("onpolicy_reference")
            if theirs is None or Path(theirs).resolve() != self.reference_path.resolve():
                raise UsageError(f"--init-from: {run.init_from} is not the reference this run "
                                 f"started from ({theirs}); resume with that checkpoint")
        path = self.cfg.training.tokenizer or run.stores[0].tokenizer_file
        if path is None:
            raise UsageError(f"data.blend: store {run.stores[0].path} has no tokenizer.json; "
                             "set training.tokenizer")
        self.tokenizer = load_tokenizer(path)
        self.records = read_prompts(self.cfg.onpolicy.prompts)
        self.prompt_ids = [self._filled(r) for r in self.records]

    def _filled(self, record) -> list[int]:
        """The prompt's ids, filled to whole blocks; checked to fit a loss row."""
        op, B, L = self.cfg.onpolicy, self.cfg.attention.block_size, self.cfg.data.seq_len
        if op.verifier == "execution" and not record.has_test:
            raise UsageError(f"onpolicy.prompts: {record.task_id} has no test; the execution "
                             "verifier needs one per prompt (or set onpolicy.verifier=model)")
        ids = self.tokenizer.encode(record.prompt)
        if not ids:
            raise UsageError(f"onpolicy.prompts: {record.task_id} encodes to no tokens")
        ids = fill_prompt(ids, B, self.tokenizer.eos_id)
        if len(ids) + op.max_new_tokens > L:
            raise UsageError(f"data.seq_len: {L} cannot hold prompt {record.task_id} ({len(ids)} "
                             f"tokens, filled) + onpolicy.max_new_tokens={op.max_new_tokens}")
        return ids

    # ------------------------------------------------------------------ data, models
    def build(self, run) -> None:
        op = self.cfg.onpolicy
        if op.prompts_per_step % run.dp_size:  # before the run directory is written
            raise UsageError(f"onpolicy.prompts_per_step: got {op.prompts_per_step}, expected a "
                             f"multiple of the {run.dp_size} data-parallel ranks")
        self.dp_rank, self.dp_size, self.spec = run.dp_rank, run.dp_size, run.spec
        self.stream = PromptStream(len(self.records), op.prompts_per_step, seed=op.seed,
                                   dp_rank=run.dp_rank, dp_size=run.dp_size)
        # the q term (loss.py, choice.py): the commit rule's choice of positions, unless ablated
        rule = CommitRule(op.strategy, op.threshold) if op.commit_choice else None
        self._forward_backward = policy_forward_backward(op.kl_weight, rule)

    def build_models(self, run) -> None:
        """The frozen reference that the KL term and the model verifier read: the
        ``--init-from`` checkpoint, also on resume."""
        op = self.cfg.onpolicy
        self.policy = unwrap(run.chunks)[0]
        self.reference = None
        if op.kl_weight > 0 or op.verifier == "model":
            self.reference = build_model(self.cfg.model, self.policy.config).eval()
            self.reference.requires_grad_(False)
            load_checkpoint(self.reference_path, [self.reference])
        self.verifier = self._verifier()

    def _verifier(self):
        if self.cfg.onpolicy.verifier == "execution":
            return ExecutionVerifier(ExecutorConfig())
        loaded = LoadedModel(self.reference, self.cfg, {}, None, self.reference_path)
        return ModelVerifier(RowModel(loaded), self.tokenizer)

    # ------------------------------------------------------------------ step
    def cost(self, run) -> StepCost:
        return StepCost(tokens=0, flops=0.0, peak_flops=None, world_size=dist.get_world_size())

    def forward_backward(self, chunks, microbatches: list, spec) -> dict:
        return self._forward_backward(chunks, microbatches, spec)

    def steps(self, run, first_step: int):
        """Each step's micro-batches come from sampling with the current weights."""
        self.rules = ModelRules.from_run_config(  # the generation settings the run restored
            self.cfg, eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id,
            stop_ids=stop_token_ids(self.tokenizer, (), {"generation": run.generation or {}}))
        for step in itertools.count(first_step):
            inputs = self._rollout(step)
            self.stream.consumed_samples = (step + 1) * self.cfg.onpolicy.prompts_per_step
            yield inputs

    def _seed(self, step: int) -> int:
        return ((self.cfg.onpolicy.seed * 1_000_003 + step) * 4099 + self.dp_rank) % (2 ** 63)

    def _scores(self, index: list[int], prompts, completions) -> torch.Tensor:
        """Verifier scores; under TP those of TP rank 0 (an execution may time out on one rank)."""
        src = ps.get_tensor_model_parallel_src_rank()
        if dist.get_rank() == src:  # the same trajectories on every TP rank: scored once
            out = rollout.score(self.verifier, [self.records[i] for i in index], prompts,
                                completions, self.tokenizer)
        else:
            out = torch.zeros(len(completions), dtype=torch.float64)
        if ps.get_tensor_model_parallel_world_size() > 1:
            host_collective(dist.broadcast, out, src=src, group=ps.get_tensor_model_parallel_group())
        return out

    def _rollout(self, step: int):
        """This rank's micro-batches of step ``step`` and the step's figures (all ranks)."""
        op, B = self.cfg.onpolicy, self.cfg.attention.block_size
        index = [i for i in self.stream.take(step) for _ in range(op.group_size)]
        prompts = [self.prompt_ids[i] for i in index]
        t0 = time.perf_counter()
        completions = rollout.sample(self.policy, self.rules,
                                     op.sampler(block_size=B, seed=self._seed(step)), prompts)
        generation_s = time.perf_counter() - t0
        scores = self._scores(index, prompts, completions)
        rewards = rollout.rewards(completions, scores, op.reward())
        advantages = group_advantages(rewards, torch.tensor(index), baseline=op.baseline,
                                      scale=op.scale_advantages)
        rows = [policy_rows(Trajectory(p, c.tokens, c.step_map, float(a)), block_size=B,
                            seq_len=self.cfg.data.seq_len, mask_id=self.cfg.model.mask_token_id,
                            pad_id=self.tokenizer.pad_id)
                for p, c, a in zip(prompts, completions, advantages)]
        local = torch.tensor([sum(r.batch_size for r in rows),
                              sum(int(r.batch.loss_mask_BL.sum()) for r in rows)], dtype=torch.float64)
        totals = torch.cat([rollout.sums(completions, scores, rewards, B), local[:1]])  # + rows
        host_collective(dist.all_reduce, totals, group=ps.get_data_parallel_group())
        stats = {**rollout.figures(totals[:-1]), "rows": int(totals[-1]), "generation_s": generation_s}
        return self._policy_batches(rows, local), stats

    def _policy_batches(self, rows, local: torch.Tensor) -> list[PolicyBatch]:
        """Equal micro-batch counts on every data-parallel rank, with the reference's log-probs."""
        mbs, L, pad = self.cfg.data.micro_batch_size, self.cfg.data.seq_len, self.tokenizer.pad_id
        count = torch.tensor([-(-int(local[0]) // mbs)], dtype=torch.long)
        tokens = local[1:].clone()
        host_collective(dist.all_reduce, count, op=dist.ReduceOp.MAX, group=ps.get_data_parallel_group())
        host_collective(dist.all_reduce, tokens, group=ps.get_data_parallel_group())
        count = max(int(count), 1)
        scale = count * self.dp_size / max(float(tokens), 1.0)
        out = []
        for mb in micro_batches(rows, mbs, count, seq_len=L, pad_id=pad):
            ref = (reference_logp(self.reference, mb.batch, self.spec) if self.cfg.onpolicy.kl_weight > 0
                   else torch.zeros(int(mb.batch.loss_mask_BL.sum())))
            out.append(PolicyBatch(mb.batch, mb.open_BL, ref, scale))
        return out

    def complete_record(self, run, record: dict) -> bool:
        """Throughput counts the loss rows' model tokens (the step's ``StepCost`` has none)."""
        record["tokens_per_s"] = 2 * self.cfg.data.seq_len * record["rows"] / record["step_time_s"]
        return False

    def progress(self, record: dict) -> dict:
        return {"loss": f"{record['loss']:.3f}", "reward": f"{record['reward']:.3f}",
                "tok/fwd": f"{record['tokens_per_forward']:.2f}",
                "verifier": f"{record['verifier']:.2f}", "kl": f"{record['kl']:.4f}"}

    # ------------------------------------------------------------------ checkpoint
    @property
    def consumed_samples(self) -> int:
        return self.stream.consumed_samples

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict | None, *, consumed_samples: int) -> None:
        self.stream.load_state_dict(state or {"consumed_samples": consumed_samples})

    def meta(self, run) -> dict:
        return {"config": self.cfg.run_config_dict(),  # what every checkpoint reader knows
                "onpolicy": dataclasses.asdict(self.cfg.onpolicy),
                "onpolicy_reference": str(self.reference_path.resolve())}
