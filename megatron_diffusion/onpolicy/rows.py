"""From sampled trajectories to the training rows of the policy-gradient loss, plain torch.

REINFORCE needs ``log pi(x_i | state before step s_i)`` for every committed token: the
probability the sampler drew it with. In the training layout ``x_t (+) x0`` (docs/masks.md) a
noisy block sees only itself and the clean earlier blocks, so every block of one row can hold its
own state. Row ``r`` (a *round*) puts every block in the state before its ``r``-th distinct
commit step; the tokens committed then carry the loss, and so do the positions the step left
masked (``open_BL``, ``choice.py``). A trajectory needs as many rows as its slowest block took
steps, not one per step. Prompts are filled on the left to whole blocks (``fill_prompt``) before
sampling, so a row's blocks are the sampler's and its logits are the sampler's
(tests/onpolicy/test_rows.py). One approximation: positions after the stop token in its block
are ``[MASK]`` in every state. docs/onpolicy.md "The loss rows".
"""

from dataclasses import dataclass

import torch

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.errors import UsageError


@dataclass(frozen=True)
class Trajectory:
    """One sampled completion of a filled prompt."""

    prompt_ids: list[int]
    """The filled prompt (its length a multiple of the block size)."""
    tokens: list[int]
    """The completion, up to and including its stop token if it has one."""
    step_map: list[int]
    """Commit step of each token of ``tokens``."""
    advantage: float = 0.0
    """Its group-relative advantage (the weight of its tokens' log-probabilities)."""


def fill_prompt(ids: list[int], block_size: int, fill_id: int) -> list[int]:
    """``ids`` with ``fill_id`` in front up to a multiple of ``block_size`` tokens."""
    return [fill_id] * (-len(ids) % block_size) + list(ids)


def rounds(step_map: list[int], block_size: int) -> list[list[int]]:
    """Per block of the completion, its distinct commit steps in order (``d_j`` above)."""
    steps = list(step_map)
    return [sorted(set(steps[i:i + block_size])) for i in range(0, len(steps), block_size)]


def _check(traj: Trajectory, block_size: int, seq_len: int) -> None:
    P, T = len(traj.prompt_ids), len(traj.tokens)
    if P == 0 or P % block_size:
        raise UsageError(f"prompt_ids: {P} tokens, expected a positive multiple of the block size "
                         f"{block_size} (fill_prompt)")
    if T == 0 or len(traj.step_map) != T:
        raise UsageError(f"step_map: {len(traj.step_map)} steps for {T} tokens, expected one per "
                         "token and at least one token")
    if P + -(-T // block_size) * block_size > seq_len:
        raise UsageError(f"data.seq_len: a row of {seq_len} tokens cannot hold a prompt of {P} "
                         f"and a completion of {T} (whole blocks of {block_size})")


@dataclass
class PolicyRows:
    """Rows of trajectories, and the masked positions each row's states left open."""

    batch: DiffusionBatch
    """``loss_mask_BL``: the tokens committed in the row's states (each token of a completion in
    exactly one row); ``loss_weights_BL``: the trajectory's advantage there and on
    ``open_BL``, 0 elsewhere."""
    open_BL: torch.Tensor
    """bool: positions masked in the row's state and not committed at its step (the sampler
    drew a token there and did not keep it); the stop token's block's tail excluded."""

    @property
    def batch_size(self) -> int:
        return self.batch.batch_size


def policy_rows(traj: Trajectory, *, block_size: int, seq_len: int, mask_id: int,
                pad_id: int) -> PolicyRows:
    """The trajectory's rows (one per round), ``x_t (+) x0`` of ``2 * seq_len`` tokens each."""
    _check(traj, block_size, seq_len)
    P, T, B = len(traj.prompt_ids), len(traj.tokens), block_size
    x0_L = torch.full((seq_len,), pad_id, dtype=torch.long)
    x0_L[:P] = torch.tensor(traj.prompt_ids)
    x0_L[P:P + T] = torch.tensor(traj.tokens)
    step_L = torch.full((seq_len,), -1, dtype=torch.long)
    step_L[P:P + T] = torch.tensor(traj.step_map)
    per_block = rounds(traj.step_map, B)
    R = max(len(d) for d in per_block)
    at_RL = torch.full((R, seq_len), -1, dtype=torch.long)  # the step each row's block is before
    for j, steps in enumerate(per_block):
        start = P + j * B
        for r, s in enumerate(steps):
            at_RL[r, start:start + B] = s
    tail_L = torch.zeros(seq_len, dtype=torch.bool)
    tail_L[P + T:-(-(P + T) // B) * B] = True  # after the stop token, in its block
    in_state_RL = at_RL >= 0
    masked_RL = in_state_RL & ((step_L >= at_RL) | tail_L)
    committed_RL = in_state_RL & (step_L == at_RL)
    open_RL = masked_RL & ~committed_RL & ~tail_L
    xt_RL = torch.where(masked_RL, mask_id, x0_L)
    batch = DiffusionBatch(
        tokens_BS=torch.cat([xt_RL, x0_L.expand(R, -1)], dim=1), labels_BL=x0_L.expand(R, -1).clone(),
        loss_weights_BL=(committed_RL | open_RL).float() * float(traj.advantage),
        document_ids_BL=torch.zeros(R, seq_len, dtype=torch.long), loss_mask_BL=committed_RL,
        t_BN=masked_RL.float().mean(dim=1, keepdim=True), num_edits_B=torch.zeros(R, dtype=torch.long),
        stage="onpolicy")
    return PolicyRows(batch, open_RL)


def padding_row(*, seq_len: int, pad_id: int) -> PolicyRows:
    """A row without loss: fills a micro-batch, or gives every data-parallel rank as many."""
    x_L = torch.full((1, seq_len), pad_id, dtype=torch.long)
    no_BL = torch.zeros(1, seq_len, dtype=torch.bool)
    return PolicyRows(DiffusionBatch(
        tokens_BS=torch.cat([x_L, x_L], dim=1), labels_BL=x_L, loss_weights_BL=torch.zeros(1, seq_len),
        document_ids_BL=torch.zeros(1, seq_len, dtype=torch.long), loss_mask_BL=no_BL,
        t_BN=torch.zeros(1, 1), num_edits_B=torch.zeros(1, dtype=torch.long), stage="onpolicy"), no_BL)


def micro_batches(rows: list[PolicyRows], size: int, count: int, *, seq_len: int,
                  pad_id: int) -> list[PolicyRows]:
    """``count`` micro-batches of ``size`` rows: ``rows`` (one or more rows each) in order,
    then padding rows."""
    flat = [r for group in rows for r in _split(group)]
    if len(flat) > size * count:
        raise ValueError(f"{len(flat)} rows do not fit {count} micro-batches of {size}")
    flat += [padding_row(seq_len=seq_len, pad_id=pad_id)] * (size * count - len(flat))
    return [PolicyRows(DiffusionBatch.collate([r.batch for r in flat[i:i + size]]),
                       torch.cat([r.open_BL for r in flat[i:i + size]]))
            for i in range(0, size * count, size)]


def _split(rows: PolicyRows) -> list[PolicyRows]:
    fields = ("tokens_BS", "labels_BL", "loss_weights_BL", "document_ids_BL", "loss_mask_BL",
              "t_BN", "num_edits_B")
    b = rows.batch
    return [PolicyRows(DiffusionBatch(stage=b.stage, **{f: getattr(b, f)[i:i + 1] for f in fields}),
                       rows.open_BL[i:i + 1])
            for i in range(b.batch_size)]
