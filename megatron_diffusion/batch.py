"""The batch a loader hands to the model: the seam between data/corruption and model/loss.

Corruption knows nothing of megatron and the model knows nothing of how noise was drawn; they
meet here. Shapes: ``B`` rows, ``L`` the configured ``seq_len`` (tokens of clean data per row),
``N`` the number of diffusion blocks per row (1 outside block mode).

Model input in each attention mode:

* ``causal`` / ``bidirectional``: ``tokens_BS`` is the corrupted row ``x_t`` (``S = L``);
  in AR training (mode ``causal`` with objective ``ar``) it is the clean row.
* ``block``: ``tokens_BS`` is ``x_t (+) x0`` (``S = 2L``): the noisy copy then the clean copy
  (docs/method.md 3). The model builds the three-part mask from ``document_ids_BL`` and the block size.

Targets are always over the ``L`` positions of the noisy copy: ``labels_BL`` is ``x0`` and
``loss_weights_BL`` carries the ELBO weight ``w(t)`` on every position that has a loss (masked
positions in the mask stage, every non-prompt position in the edit stage) and 0 elsewhere.
"""

from dataclasses import dataclass, fields

import torch

STAGES = ("mask", "edit")


@dataclass
class DiffusionBatch:
    tokens_BS: torch.Tensor
    """int64 model input: ``x_t`` (``S = L``) or ``x_t (+) x0`` (``S = 2L``, block mode)."""
    labels_BL: torch.Tensor
    """int64 clean tokens ``x0``, the targets."""
    loss_weights_BL: torch.Tensor
    """float32 per-position loss weight (0 = no loss). Already includes ``w(t)``."""
    document_ids_BL: torch.Tensor
    """int64 document index of every token of the row (non-decreasing); drives packing masks."""
    loss_mask_BL: torch.Tensor
    """bool: the loss-eligible positions (every non-prompt token), masked or not: the
    denominator of the per-token normalisation (LLaDA). Which of them carry a loss is
    ``loss_weights_BL > 0``."""
    t_BN: torch.Tensor
    """float32 corruption level per block (``N = 1`` outside block mode)."""
    num_edits_B: torch.Tensor
    """int64 number of edit operations applied to each row (0 in the mask stage)."""
    stage: str = "mask"
    """``mask`` or ``edit`` (the two-stage curriculum)."""

    def to(self, device) -> "DiffusionBatch":
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to(device, non_blocking=True) if torch.is_tensor(v) else v
        return DiffusionBatch(**out)

    @property
    def seq_len(self) -> int:
        return self.labels_BL.shape[1]

    @property
    def batch_size(self) -> int:
        return self.labels_BL.shape[0]

    @staticmethod
    def collate(items: list["DiffusionBatch"]) -> "DiffusionBatch":
        """Stack rows (each item ``B = 1`` or more) into one batch; stages must agree."""
        stages = {it.stage for it in items}
        if len(stages) != 1:
            raise ValueError(f"cannot collate rows of different stages: {sorted(stages)}")
        out = {}
        for f in fields(DiffusionBatch):
            if f.name == "stage":
                continue
            out[f.name] = torch.cat([getattr(it, f.name) for it in items], dim=0)
        return DiffusionBatch(stage=stages.pop(), **out)
