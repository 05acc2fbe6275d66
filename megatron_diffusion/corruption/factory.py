"""The run's corruption from its config: what the loader's workers apply to every clean row.

``make_corruptor(cfg, ...)`` builds the ``Corruptor`` of a run config (``cfg`` is a
``config.RunConfig``; it is read, not imported, since the run config is a later level): mode
``block`` or ``single`` from the attention mode, the vocabulary its edits may draw from
(``random_token_ids``: the store's ids without EOS, [MASK] and pad, ``data.vocab``'s
``store_vocabulary``), the curriculum over ``training.train_iters``. The AR objective has no
corruption: ``CleanBatcher`` hands the clean row on with loss on every non-prompt position.
``eval_corruption_config`` is the config of the objective itself (no warmup, mask stage only),
which validation and the ELBO of ``eval infill`` measure.
"""

import copy

import torch

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.corruption.corruptor import Corruptor


class CleanBatcher:
    """The AR objective's "corruption": the clean row, loss on every non-prompt position."""

    def corrupt(self, tokens_BL, document_ids_BL, *, step, generator, prompt_mask_BL=None):
        eligible = torch.ones_like(tokens_BL, dtype=torch.bool)
        if prompt_mask_BL is not None:
            eligible &= ~prompt_mask_BL
        B = tokens_BL.shape[0]
        return DiffusionBatch(tokens_BS=tokens_BL.clone(), labels_BL=tokens_BL.clone(),
                              loss_weights_BL=eligible.float(), document_ids_BL=document_ids_BL,
                              loss_mask_BL=eligible, t_BN=torch.zeros(B, 1),
                              num_edits_B=torch.zeros(B, dtype=torch.long), stage="mask")


def random_token_ids(vocab_size: int, special_ids) -> torch.Tensor:
    """The ids ``0 .. vocab_size - 1`` without ``special_ids``, in order."""
    ids = torch.arange(vocab_size)
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[list(special_ids)] = False
    return ids[keep]


def make_corruptor(cfg, *, vocab_size: int, special_ids):
    """The run's corruption (or the clean batcher of the AR objective). Edits insert and
    substitute only ordinary tokens: ``special_ids`` (EOS, [MASK], pad) are excluded."""
    if cfg.loss.objective == "ar":
        return CleanBatcher()
    mode = "block" if cfg.attention.mode == "block" else "single"
    return Corruptor(cfg.corruption, seq_len=cfg.data.seq_len, mode=mode,
                     block_size=cfg.attention.block_size, visibility=cfg.attention.visibility,
                     mask_token_id=cfg.model.mask_token_id,
                     random_token_ids=random_token_ids(vocab_size, special_ids),
                     total_steps=cfg.training.train_iters)


def eval_corruption_config(cfg):
    """A copy of run config ``cfg`` whose corruption is post-warmup and mask stage only (the
    objective itself, the ELBO's process; the training corruptor would draw validation rows at
    its step 0, inside the warmup)."""
    c = copy.deepcopy(cfg)
    c.corruption.warmup_steps = 0
    c.corruption.edit_stage_fraction = 0.0
    return c
