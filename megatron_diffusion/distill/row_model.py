"""A block-diffusion model seen as ``logp_fn(revealed_RNB) -> logp_RNBV`` over one data row.

The row's tokens are the data (``x0``, fixed); the first ``context_blocks`` blocks are context,
the others are the blocks whose orders are searched. A state gives every searched block its own
revealed positions: the model input is the training layout ``x_t (+) x0`` with ``x_t`` = ``x0``
where revealed and ``[MASK]`` elsewhere. A noisy block attends to itself and to the clean
copies of the earlier blocks only (docs/masks.md), so its outputs are those of decoding that
block after the earlier ones are final: one forward evaluates all blocks' states at once, the
logits the sampler's exact cache reproduces (tests/sampling/test_exactness.py). Under the
logit shift a position's prediction is read where training reads it (``loss.readout.shift_sources``).
"""

from dataclasses import dataclass

import torch

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.errors import UsageError
from megatron_diffusion.layout import block_ids
from megatron_diffusion.loss.readout import shift_sources
from megatron_diffusion.model.inference import LoadedModel
from megatron_diffusion.model.inputs import model_inputs


@dataclass(frozen=True)
class RowModel:
    """What the search needs of a checkpoint: its model and the attention/shift it trained with."""

    loaded: LoadedModel

    @property
    def block_size(self) -> int:
        return self.loaded.config.attention.block_size

    def check(self, seq_len: int, context_blocks: int) -> None:
        attn = self.loaded.config.attention
        if attn.mode != "block" or attn.visibility != "shared":
            raise UsageError(f"--checkpoint: trajectories need a block-diffusion model with shared "
                             f"visibility, got attention.mode={attn.mode}, visibility={attn.visibility}")
        if seq_len % self.block_size or seq_len // self.block_size <= context_blocks:
            raise UsageError(f"--context-blocks: {context_blocks} context blocks of "
                             f"{self.block_size} leave no block to search in rows of {seq_len}")

    def logp_fn(self, x0_L: torch.Tensor, document_ids_L: torch.Tensor, context_blocks: int):
        """``(logp_fn, x0_NB)`` for the searched blocks of one row."""
        B, L = self.block_size, x0_L.numel()
        first = context_blocks * B
        targets_K = self._sources(document_ids_L)[first:]
        mask_id = self.loaded.config.model.mask_token_id
        model = self.loaded.model
        attention = self.loaded.config.attention

        @torch.no_grad()
        def logp_fn(revealed_RNB: torch.Tensor) -> torch.Tensor:
            R = revealed_RNB.shape[0]
            xt_RL = x0_L.expand(R, L).clone()
            searched = xt_RL[:, first:]
            xt_RL[:, first:] = torch.where(revealed_RNB.reshape(R, -1), searched, mask_id)
            batch = _row_batch(xt_RL, x0_L, document_ids_L)
            logits = model(*model_inputs(batch, attention))[:, targets_K, :model.real_vocab_size]
            return logits.float().log_softmax(-1).view(R, -1, B, logits.shape[-1])

        return logp_fn, x0_L[first:].view(-1, B)

    def _sources(self, document_ids_L: torch.Tensor) -> torch.Tensor:
        """``[L]``: the output index that predicts each position (position 0: itself)."""
        L = document_ids_L.numel()
        cfg = self.loaded.config
        if not (cfg.model.logit_shift or cfg.loss.objective == "ar"):
            return torch.arange(L)
        blocks_1L = block_ids(document_ids_L[None], self.block_size, cfg.attention.visibility)
        return torch.cat([torch.zeros(1, dtype=torch.long), shift_sources(1, L, blocks_1L)[0]])


def _row_batch(xt_RL: torch.Tensor, x0_L: torch.Tensor, document_ids_L: torch.Tensor) -> DiffusionBatch:
    R, L = xt_RL.shape
    return DiffusionBatch(
        tokens_BS=torch.cat([xt_RL, x0_L.expand(R, L)], dim=1), labels_BL=x0_L.expand(R, L),
        loss_weights_BL=torch.ones(R, L), document_ids_BL=document_ids_L.expand(R, L),
        loss_mask_BL=torch.ones(R, L, dtype=torch.bool), t_BN=torch.ones(R, 1),
        num_edits_B=torch.zeros(R, dtype=torch.long))
