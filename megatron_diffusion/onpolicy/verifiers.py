"""Verifiers: how correct a sampled completion is, the ``V(tau[0])`` of Seed Diffusion eq. 10.

One protocol, ``Verifier``: ``score(record, completion) -> float`` in ``[0, 1]`` (higher is
better) and ``score_batch`` (the same scores, in order). ``ExecutionVerifier`` (prompts with unit
tests) cuts the completion as HumanEval evaluation does, runs prompt + completion + test in the
evaluation sandbox and scores 1.0 for a pass, else 0.0. ``ModelVerifier`` (any prompt; the
paper's "model-based verifier") scores ``exp(mean log p)`` of the completion's tokens under a
frozen reference decoding it left to right, one token per step, block by block
(``distill.orders``' left-to-right order through ``distill.row_model.RowModel``); an empty
completion scores 0.0. docs/onpolicy.md "Verifiers".
"""

import math
from typing import Protocol

import torch

from megatron_diffusion.data.tokenizer import LoadedTokenizer, load_tokenizer
from megatron_diffusion.distill.row_model import RowModel
from megatron_diffusion.errors import UsageError
from megatron_diffusion.evaluation.executor import CheckResult, ExecutorConfig, run_checks
from megatron_diffusion.evaluation.humaneval import build_program, postprocess_completion
from megatron_diffusion.onpolicy.prompts import PromptRecord
from megatron_diffusion.distill.orders import LogProbFn, data_logp, left_to_right, states


class Verifier(Protocol):
    """Scores a completion of a prompt in ``[0, 1]``; higher is better."""

    def score(self, record: PromptRecord, completion: str) -> float: ...

    def score_batch(self, records: list[PromptRecord], completions: list[str]) -> list[float]: ...


def _pairs(records: list, completions: list) -> None:
    if len(records) != len(completions):
        raise UsageError(f"completions: got {len(completions)} for {len(records)} records, expected one each")


class ExecutionVerifier:
    """1.0 when the completion passes the record's unit test in the sandbox, else 0.0."""

    def __init__(self, executor: ExecutorConfig | None = None, postprocess: bool = True):
        self.executor = (executor or ExecutorConfig()).validate()
        self.postprocess = postprocess

    def program(self, record: PromptRecord, completion: str) -> str:
        if not record.has_test:
            raise UsageError(f"{record.task_id}: no 'test'/'entry_point', the execution verifier needs "
                             f"both (use the model verifier for prompts without tests)")
        text = postprocess_completion(completion) if self.postprocess else completion
        return build_program(record.to_json(), text)

    def checks(self, records: list[PromptRecord], completions: list[str]) -> list[CheckResult]:
        """The sandbox's verdict on every pair (status and one-line detail), in order."""
        _pairs(records, completions)
        programs = [self.program(r, c) for r, c in zip(records, completions)]
        return run_checks(programs, self.executor) if programs else []

    def score_batch(self, records: list[PromptRecord], completions: list[str]) -> list[float]:
        return [1.0 if c.status == "passed" else 0.0 for c in self.checks(records, completions)]

    def score(self, record: PromptRecord, completion: str) -> float:
        return self.score_batch([record], [completion])[0]


def left_to_right_logprobs(logp_fn: LogProbFn, x0_NB: torch.Tensor,
                           states_per_call: int | None = None) -> torch.Tensor:
    """``[N, B]``: ``log p(x0_i | positions < i of its block revealed)`` for every position.

    The left-to-right order reveals position ``i`` of each block at step ``i``, so the state
    before position ``i`` is ``states(...)[i]``; its log-probability is the diagonal of the
    ``[S, N, B]`` table. ``states_per_call`` bounds the states per ``logp_fn`` call (memory).
    """
    N, B = x0_NB.shape
    before_SNB = states(left_to_right(B).expand(N, B))
    step = states_per_call or B
    rows = [data_logp(logp_fn(before_SNB[s:s + step]), x0_NB) for s in range(0, B, step)]
    return torch.cat(rows).diagonal(dim1=0, dim2=2)


class ModelVerifier:
    """``exp(mean log p)`` of the completion's tokens under a frozen reference checkpoint."""

    def __init__(self, reference: RowModel, tokenizer: LoadedTokenizer, states_per_call: int = 4):
        self.reference = reference
        self.tokenizer = tokenizer
        self.states_per_call = states_per_call

    @classmethod
    def from_checkpoint(cls, path, states_per_call: int = 4) -> "ModelVerifier":
        from megatron_diffusion.loading.trained import load_model

        loaded = load_model(path)
        if loaded.tokenizer_path is None:
            raise UsageError(f"reference: {loaded.path} has no tokenizer.json")
        return cls(RowModel(loaded), load_tokenizer(loaded.tokenizer_path), states_per_call)

    def completion_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
        """``[C]``: each completion token's log-probability, decoded left to right."""
        P, C, B = len(prompt_ids), len(completion_ids), self.reference.block_size
        if P == 0:
            raise UsageError("prompt: got no tokens, expected at least one (the first completion token "
                             "needs context)")
        context_blocks, L = P // B, -(-(P + C) // B) * B
        limit = self.reference.loaded.config.model.max_position_embeddings
        if L > limit:
            raise UsageError(f"completion: prompt + completion fill {L} positions, the reference model "
                             f"has max_position_embeddings = {limit}")
        self.reference.check(L, context_blocks)
        pad = self.reference.loaded.config.model.mask_token_id
        x0_L = torch.tensor(prompt_ids + completion_ids + [pad] * (L - P - C))
        logp_fn, x0_NB = self.reference.logp_fn(x0_L, torch.zeros(L, dtype=torch.long), context_blocks)
        lp = left_to_right_logprobs(logp_fn, x0_NB, self.states_per_call).reshape(-1)
        first = P - context_blocks * B
        return lp[first:first + C]

    def score_ids(self, prompt_ids: list[int], completion_ids: list[int]) -> float:
        if not completion_ids:
            return 0.0
        return math.exp(float(self.completion_logprobs(prompt_ids, completion_ids).mean()))

    def score(self, record: PromptRecord, completion: str) -> float:
        return self.score_ids(self.tokenizer.encode(record.prompt), self.tokenizer.encode(completion))

    def score_batch(self, records: list[PromptRecord], completions: list[str]) -> list[float]:
        _pairs(records, completions)
        return [self.score(r, c) for r, c in zip(records, completions)]
