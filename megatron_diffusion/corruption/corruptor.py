"""The corruption front: clean packed rows in, a ``DiffusionBatch`` out (docs/method.md 1-5).

``Corruptor.corrupt`` runs in the data loader, on CPU, with an explicit ``torch.Generator``:
(1) levels ``t`` per row (mode 'single') or per block (mode 'block'), capped during the
corruption warmup (``mask.py``); (2) in the edit stage, edits of ``x0`` within a budget
(``edit.py``; Seed Diffusion 3.1); (3) masking at ``u(t)``, or the block-wise clipped rate
``min(1, max(u(t_b), 1/B))`` with a one-token fallback (``block.py``); (4) ELBO weights
``u'(t)/u(t)`` on masked tokens, and weight 1 on the visible tokens of an edited row (Seed
Diffusion eq. 5/6); (5) trajectory rows (Seed Diffusion eq. 9): a step of the block's searched
reveal order replaces (1) and (3)-(4); the orders are searched and stored by ``distill/``, the
home of trajectory distillation (docs/distillation.md), and only applied here. Prompt tokens
are never masked or edited and weigh 0. docs/corruption.md has every rule, its config field and
the departures from the papers.

Output per ``batch.py``: ``tokens_BS`` is ``x_t`` (single) or ``x_t (+) x0`` (block, ``S = 2L``);
``labels_BL = x0``; ``t_BN`` is ``[B, 1]`` (single) or ``[B, num_block_slots]`` (block, NaN
in unused slots).
"""

import torch

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.corruption.block import clipped_rate, ensure_one_masked, num_block_slots
from megatron_diffusion.corruption.config import CorruptionConfig
from megatron_diffusion.corruption.edit import apply_edits
from megatron_diffusion.corruption.mask import sample_levels, sample_mask
from megatron_diffusion.corruption.schedules import get_schedule
from megatron_diffusion.errors import UsageError, check_choice, check_int
from megatron_diffusion.layout import VISIBILITIES, block_ids

MODES = ("single", "block")


class Corruptor:
    """Stateless apart from its configuration: the same inputs, step and generator state give the
    same batch."""

    def __init__(self, cfg: CorruptionConfig, *, seq_len: int, mode: str, block_size: int | None,
                 visibility: str, mask_token_id: int, random_token_ids: torch.Tensor,
                 total_steps: int):
        self.cfg = cfg.validate()
        check_choice("mode", mode, MODES)
        check_choice("visibility", visibility, VISIBILITIES)
        check_int("seq_len", seq_len, lo=1)
        check_int("total_steps", total_steps, lo=1)
        if mode == "block":
            check_int("block_size (block mode)", block_size, lo=1)
        check_int("mask_token_id", mask_token_id, lo=0)
        ids = torch.as_tensor(random_token_ids)
        if ids.dim() != 1 or ids.dtype not in (torch.int32, torch.int64) or ids.numel() < 2 \
                or ids.unique().numel() != ids.numel() or bool((ids == mask_token_id).any()):
            raise UsageError("random_token_ids: expected a 1-D integer tensor of >= 2 distinct "
                             "ids without the mask token")
        self.seq_len, self.mode, self.block_size = seq_len, mode, block_size
        self.visibility, self.mask_token_id, self.total_steps = visibility, mask_token_id, total_steps
        self.random_token_ids = ids.long()
        self.schedule = get_schedule(cfg.schedule)
        self.num_blocks = num_block_slots(seq_len, block_size, visibility) if mode == "block" else 1
        """Width ``N`` of ``t_BN``."""

    def stage_at(self, step: int) -> str:
        """'mask' or 'edit' at optimizer ``step`` (two-stage curriculum)."""
        return self.cfg.stage_at(step, self.total_steps)

    def u_max_at(self, step: int) -> float:
        """Warmup cap on ``t`` at ``step`` (1.0 outside warmup)."""
        return self.cfg.u_max_at(step)

    def corrupt(self, tokens_BL: torch.Tensor, document_ids_BL: torch.Tensor, *, step: int,
                generator: torch.Generator, prompt_mask_BL: torch.Tensor | None = None,
                step_map_BL: torch.Tensor | None = None) -> DiffusionBatch:
        """Steps 1-5 of the module docstring, drawing from ``generator`` in that order."""
        x0_BL, document_ids_BL, editable_BL = self._check_inputs(tokens_BL, document_ids_BL,
                                                                 prompt_mask_BL)
        warmup, stage = self.cfg.in_warmup(step), self.stage_at(step)
        trajectory_B = None
        if step_map_BL is not None:
            trajectory_B = self._trajectory_rows(step_map_BL, generator)
            editable_BL = editable_BL & ~(trajectory_B[:, None] & (step_map_BL < 0))
        t_BN, t_BL, blocks_BL = self._levels(document_ids_BL, step, warmup, generator)
        u_BL = self.schedule.u(t_BL)
        y_BL, num_edits_B, edited_B = self._edit_stage(stage, x0_BL, document_ids_BL, editable_BL,
                                                       u_BL, blocks_BL, generator)
        masked_BL, w_BL = self._mask(u_BL, t_BL, editable_BL, blocks_BL, warmup, generator)
        if trajectory_B is not None and bool(trajectory_B.any()):
            traj_masked_BL, traj_w_BL, g_BN = self._trajectory_mask(step_map_BL, blocks_BL, generator)
            rows_B1 = trajectory_B[:, None]
            masked_BL = torch.where(rows_B1, traj_masked_BL & editable_BL, masked_BL)
            w_BL = torch.where(rows_B1, traj_w_BL.to(w_BL.dtype), w_BL)
            t_BN = torch.where(rows_B1, g_BN.to(t_BN.dtype), t_BN)
        # Masked positions carry w(t); in the edit stage every other editable position carries 1
        # ("no carry-over unmasking", docs/method.md 5). loss_mask marks the eligible (non-prompt)
        # positions in both stages: the denominator of the per-token normalisation.
        has_loss_BL = masked_BL | (editable_BL & edited_B[:, None])
        weights_BL = torch.where(masked_BL, w_BL, has_loss_BL.to(w_BL.dtype))
        xt_BL = torch.where(masked_BL, torch.full_like(y_BL, self.mask_token_id), y_BL)
        tokens_BS = torch.cat([xt_BL, x0_BL], dim=1) if self.mode == "block" else xt_BL
        return DiffusionBatch(tokens_BS=tokens_BS, labels_BL=x0_BL.clone(),
                              loss_weights_BL=weights_BL.float(), document_ids_BL=document_ids_BL,
                              loss_mask_BL=editable_BL.clone(), t_BN=t_BN.float(),
                              num_edits_B=num_edits_B, stage=stage)

    def _levels(self, document_ids_BL, step: int, warmup: bool, generator):
        """Step 1: ``(t_BN, t_BL, blocks_BL)``; unused block slots NaN; ``blocks_BL`` None in
        single mode."""
        cfg, (B, L), device = self.cfg, document_ids_BL.shape, document_ids_BL.device
        t_BN = sample_levels(B, self.num_blocks, t_min=cfg.t_min,
                             u_max=self.schedule.t_cap(cfg.u_max_at(step)),
                             warmup=warmup, generator=generator, device=device)
        if self.mode != "block":
            return t_BN, t_BN.expand(B, L), None
        blocks_BL = block_ids(document_ids_BL, self.block_size, self.visibility)
        used_BN = torch.zeros(B, self.num_blocks, dtype=torch.bool, device=device)
        used_BN.scatter_(1, blocks_BL, True)
        t_BN = torch.where(used_BN, t_BN, torch.full_like(t_BN, float("nan")))
        return t_BN, t_BN.gather(1, blocks_BL), blocks_BL

    def _edit_stage(self, stage: str, x0_BL, document_ids_BL, editable_BL, u_BL, blocks_BL,
                    generator):
        """Step 2: ``(y_BL, num_edits_B, edited_B)``; outside the edit stage ``y = x0``."""
        B, device = x0_BL.shape[0], x0_BL.device
        edited_B = torch.full((B,), stage == "edit", dtype=torch.bool, device=device)
        if stage != "edit":
            return x0_BL, torch.zeros(B, dtype=torch.long, device=device), edited_B
        if self.cfg.edit_row_fraction < 1.0:
            edited_B = torch.rand(B, generator=generator, device=device) < self.cfg.edit_row_fraction
        y_BL, num_edits_B = self._edit(x0_BL, document_ids_BL, editable_BL, u_BL, blocks_BL,
                                       generator, edited_B)
        return y_BL, num_edits_B, edited_B

    def _mask(self, u_BL, t_BL, editable_BL, blocks_BL, warmup: bool, generator):
        """Steps 3-4: ``(masked_BL, w_BL)``, the masked-token weight ``w`` at every position."""
        cfg = self.cfg
        if self.mode == "block":
            capped = warmup and cfg.block_warmup == "cap"  # no 1/B floor while warming up
            rate_BL = u_BL.clamp(max=1.0) if capped else clipped_rate(u_BL, self.block_size)
            masked_BL = sample_mask(rate_BL, editable_BL, generator)
            masked_BL = ensure_one_masked(masked_BL, blocks_BL, editable_BL, self.num_blocks,
                                          generator)
        else:
            rate_BL = u_BL
            masked_BL = sample_mask(rate_BL, editable_BL, generator)
        if warmup or cfg.weighting == "none":
            return masked_BL, torch.ones_like(rate_BL)
        return masked_BL, self.schedule.du(t_BL) / rate_BL

    def _trajectory_rows(self, step_map_BL: torch.Tensor, generator) -> torch.Tensor:
        """``[B]`` bool: the rows trained on their reveal order this time."""
        if self.mode != "block":
            raise UsageError("data.trajectories: reveal orders are per block; attention.mode must be 'block'")
        if step_map_BL.shape[1] != self.seq_len:
            raise UsageError(f"step_map_BL: got shape {tuple(step_map_BL.shape)}, expected "
                             f"[batch, {self.seq_len}]")
        draw_B = torch.rand(step_map_BL.shape[0], generator=generator, device=step_map_BL.device)
        return (draw_B < self.cfg.trajectory_fraction) & (step_map_BL >= 0).any(dim=1)

    def _trajectory_mask(self, step_map_BL, blocks_BL, generator):
        """Eq. 9's state of every searched block: ``(masked_BL, weight_BL, g_BN)``."""
        B, N = step_map_BL.shape[0], self.num_blocks
        device = step_map_BL.device
        last_BN = torch.full((B, N), -1, dtype=torch.long, device=device)
        last_BN.scatter_reduce_(1, blocks_BL, step_map_BL.long(), "amax")
        s_BN = torch.floor(torch.rand(B, N, generator=generator, device=device) * (last_BN + 1))
        searched_BL = step_map_BL >= 0
        masked_BL = searched_BL & (step_map_BL >= s_BN.long().gather(1, blocks_BL))
        zeros_BN = torch.zeros(B, N, dtype=torch.float64, device=device)
        count_BN = zeros_BN.scatter_add(1, blocks_BL, masked_BL.double())
        size_BN = zeros_BN.scatter_add(1, blocks_BL, searched_BL.double())
        g_BN = torch.where(size_BN > 0, count_BN / size_BN.clamp(min=1), torch.nan)
        if self.cfg.trajectory_weighting == "uniform":
            return masked_BL, torch.ones(step_map_BL.shape, dtype=torch.float64, device=device), g_BN
        return masked_BL, 1.0 / g_BN.gather(1, blocks_BL), g_BN

    def _edit(self, x0_BL, document_ids_BL, editable_BL, u_BL, blocks_BL, generator,
              edited_B=None):
        """Edited rows and ``num_edits_B``: one budget per row (single mode, realigned inside
        ``edit_window``) or per block from the block's own level (block mode, block-local);
        rows with ``edited_B`` False get budget 0."""
        cfg = self.cfg
        if blocks_BL is None:
            budget_BN = self._edit_budget(u_BL, editable_BL, generator)
        else:
            budget_BN = self._block_edit_budget(u_BL, editable_BL, blocks_BL, generator)
        if edited_B is not None:
            budget_BN = budget_BN * edited_B.reshape(-1, *([1] * (budget_BN.dim() - 1)))
        return apply_edits(x0_BL, document_ids_BL, editable_BL, budget_BN, cfg.edit_op_probs(),
                           self.random_token_ids, generator, groups_BL=blocks_BL,
                           window=cfg.edit_window)

    def _edit_budget(self, u_BL, editable_BL, generator) -> torch.Tensor:
        """``k = min(floor(eps * n), stochastic_round(eps * mean u * n))``, n = editable tokens."""
        eps = self.cfg.edit_max_rate
        n_B = editable_BL.sum(1)
        expected_B = eps * torch.where(editable_BL, u_BL, torch.zeros_like(u_BL)).sum(1)
        draw_B = torch.rand(n_B.shape, generator=generator, device=n_B.device)
        budget_B = torch.floor(expected_B.double() + draw_B).long()
        return torch.minimum(budget_B, torch.floor(eps * n_B.double()).long())

    def _block_edit_budget(self, u_BL, editable_BL, blocks_BL, generator) -> torch.Tensor:
        """Per block ``k_b = stochastic_round(eps * u(t_b) * n_b)`` (``n_b`` its editable tokens),
        so ``E[k_b] = eps * u(t_b) * n_b`` and ``k_b <= ceil(eps * n_b)``."""
        B, N = blocks_BL.shape[0], self.num_blocks
        n_BN = torch.zeros(B, N, dtype=torch.float64, device=u_BL.device)
        n_BN.scatter_add_(1, blocks_BL, editable_BL.double())
        u_BN = torch.zeros_like(n_BN).scatter_reduce_(1, blocks_BL, u_BL.double(), "amax")
        draw_BN = torch.rand(B, N, generator=generator, device=u_BL.device, dtype=torch.float64)
        return torch.floor(self.cfg.edit_max_rate * u_BN * n_BN + draw_BN).long()

    def _check_inputs(self, tokens_BL, document_ids_BL, prompt_mask_BL):
        if tokens_BL.dim() != 2 or tokens_BL.shape[1] != self.seq_len:
            raise UsageError(f"tokens_BL: got shape {tuple(tokens_BL.shape)}, expected "
                             f"[batch, {self.seq_len}]")
        if document_ids_BL.shape != tokens_BL.shape:
            raise UsageError(f"document_ids_BL: got shape {tuple(document_ids_BL.shape)}, "
                             f"expected {tuple(tokens_BL.shape)}")
        if prompt_mask_BL is None:
            editable_BL = torch.ones_like(tokens_BL, dtype=torch.bool)
        else:
            if prompt_mask_BL.shape != tokens_BL.shape:
                raise UsageError(f"prompt_mask_BL: got shape {tuple(prompt_mask_BL.shape)}, "
                                 f"expected {tuple(tokens_BL.shape)}")
            editable_BL = ~prompt_mask_BL.bool()
        return tokens_BL.long(), document_ids_BL.long(), editable_BL
