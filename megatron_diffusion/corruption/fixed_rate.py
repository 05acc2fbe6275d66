"""Fixed-rate masking: the corruption of the infill metrics (``eval infill``, ``eval quality``,
the trainer's ``training.infill_eval_interval``).

Every eligible (non-prompt) token is masked with probability ``rate``, independent of any
schedule; in block mode within each block, with at least one masked token per block (the
training-time fallback, ``block.ensure_one_masked``) and the clean copy of the row appended
(``x_t (+) x0``), exactly the block forward of training. Loss weight 1 on the masked tokens, so
the loss is the plain masked-token cross entropy and the accuracy is read at those positions.
"""

import torch

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.corruption.block import ensure_one_masked
from megatron_diffusion.errors import UsageError
from megatron_diffusion.layout import block_ids


class FixedRateMasking:
    """Corruption at a fixed mask rate (a loader ``corrupt_fn``; weights 1 on masked tokens)."""

    def __init__(self, rate: float, *, mask_token_id: int, block_size: int | None,
                 visibility: str = "shared"):
        if not 0 < rate <= 1:
            raise UsageError(f"mask rate: got {rate}, expected a number in (0, 1]")
        self.rate, self.mask_token_id = rate, mask_token_id
        self.block_size, self.visibility = block_size, visibility

    def corrupt(self, tokens_BL, document_ids_BL, *, step=0, generator=None, prompt_mask_BL=None):
        eligible = torch.ones_like(tokens_BL, dtype=torch.bool)
        if prompt_mask_BL is not None:
            eligible &= ~prompt_mask_BL
        masked = (torch.rand(tokens_BL.shape, generator=generator) < self.rate) & eligible
        B = tokens_BL.shape[0]
        if self.block_size is not None:  # at least one masked token per block, as in training
            blocks = block_ids(document_ids_BL, self.block_size, self.visibility)
            # uniform float keys: the draws these metrics were always made with
            keys = torch.rand(tokens_BL.shape, generator=generator)
            masked = ensure_one_masked(masked, blocks, eligible, int(blocks.max()) + 1, generator,
                                       keys_BL=keys)
        xt = torch.where(masked, torch.full_like(tokens_BL, self.mask_token_id), tokens_BL)
        tokens = torch.cat([xt, tokens_BL], dim=1) if self.block_size is not None else xt
        return DiffusionBatch(tokens_BS=tokens, labels_BL=tokens_BL.clone(),
                              loss_weights_BL=masked.float(), document_ids_BL=document_ids_BL,
                              loss_mask_BL=eligible, t_BN=torch.full((B, 1), self.rate),
                              num_edits_B=torch.zeros(B, dtype=torch.long))
