"""Lossless self-speculative decoding of a block model with the logit shift (docs/sampling.md).

A block-mode model with a **causal** clean stream and the logit shift is two models in one set
of weights: the clean stream is an exact AR model, and a block of ``[MASK]`` after a clean
prefix drafts the tokens after it. One forward does both, TiDAR-style: it verifies the ``D``
drafts on the clean stream (greedy: the longest prefix equal to the AR argmax plus the AR's own
next token; sampled: speculative sampling, Leviathan et al. 2023), and drafts ``D + 1`` blocks,
one for every possible number of accepted drafts, so the next forward always has a draft. The
output is the AR decode's, token for token. The attention is the training mask predicate on the
forward's slots; a rejection just moves the row's cache offset back, so the cache always equals
a fresh prefill of the accepted sequence. docs/sampling.md "Self-speculative decoding" has the
layout and the cost, ``1 + D + (D + 1)^2`` tokens per forward.

Shape suffixes: ``B`` rows, ``C`` buffer columns, ``D`` draft tokens, ``K = D + 1`` verified
positions, ``W`` chunk width, ``S`` key slots, ``V`` vocabulary.
"""

import time
from dataclasses import dataclass, fields

import torch

from megatron_diffusion.errors import UsageError
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.masks.dense import MaskTokens, make_mask_mod
from megatron_diffusion.sampling.backend import as_backend
from megatron_diffusion.sampling.config import SamplerConfig
from megatron_diffusion.sampling.sampler import Completion, ModelRules, check_prompt_ids

_PREDICATE = AttentionConfig(mode="block", clean_stream="causal")


def check_speculative_model(rules: ModelRules) -> None:
    """Refuse (one line) a model whose clean stream is not an exact AR model with the shift."""
    if not (rules.mode == "block" and rules.clean_stream == "causal" and rules.logit_shift):
        raise UsageError(
            "--strategy speculative: needs a block-mode model with a causal clean stream and the "
            f"logit shift (attention.clean_stream=causal, model.logit_shift=true); this one is "
            f"mode={rules.mode}, clean_stream={rules.clean_stream}, logit_shift={rules.logit_shift}")


@dataclass
class _Rows:
    """The live rows of a batch (finished rows are dropped from every tensor at once)."""

    seq_BC: torch.Tensor
    """Left-padded prompt, then the committed tokens (pad after them)."""
    pad_B: torch.Tensor
    index_B: torch.Tensor
    """Original index of each live row in the batch."""
    n_B: torch.Tensor
    """First uncommitted column."""
    cached_B: torch.Tensor
    """Columns whose keys/values are final in the cache (``n - 1`` after the first forward)."""
    draft_BD: torch.Tensor
    """Draft tokens for columns ``n .. n+D-1``."""
    has_draft_B: torch.Tensor
    """False before the first forward (the drafts fed then are filler, never accepted)."""
    draft_probs_BDV: torch.Tensor | None
    """Sampling: the (tempered) distributions the drafts were drawn from."""
    forwards_B: torch.Tensor
    commit_step_BC: torch.Tensor

    def keep(self, index_B: torch.Tensor) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                setattr(self, f.name, value[index_B])

    @property
    def num(self) -> int:
        return self.seq_BC.shape[0]


@dataclass(frozen=True)
class _Chunk:
    """One forward's inputs and where its outputs are read."""

    tokens_BW: torch.Tensor
    positions_BW: torch.Tensor
    mask_B1WS: torch.Tensor
    logit_index_BN: torch.Tensor
    """``K`` verifying clean outputs, then ``K`` draft blocks of ``D`` outputs each."""


class SpeculativeSampler:
    """Decode batches of token-id prompts by self-speculation (module docstring)."""

    def __init__(self, model, rules: ModelRules, cfg: SamplerConfig):
        """``model``: a ``DiffusionGPTModel`` or a ``ModelBackend`` (a KV cache is required).
        ``cfg``: validated settings with ``strategy='speculative'``."""
        check_speculative_model(rules)
        self.backend = as_backend(model)
        if not self.backend.supports_cache:
            raise UsageError("--strategy speculative: needs a model backend with a KV cache")
        self.rules = rules
        self.cfg = cfg.resolve(rules.mode, rules.training_block_size)
        self.use_cache = True
        self.D = self.cfg.draft_len
        self.stops = () if self.cfg.ignore_eos else rules.stops
        self.num_model_calls = 0

    def check_prompts(self, prompts: list[list[int]]) -> None:
        check_prompt_ids(prompts, self.rules.max_positions)

    # -- layout ---------------------------------------------------------------------------------

    def _rows(self, prompts: list[list[int]], P: int, C: int) -> _Rows:
        device, num, D = self.backend.device, len(prompts), self.D
        seq_BC = torch.full((num, C), self.rules.pad_id, dtype=torch.long)
        for i, ids in enumerate(prompts):
            seq_BC[i, P - len(ids):P] = torch.as_tensor(ids, dtype=torch.long)
        zeros_B = torch.zeros(num, dtype=torch.long, device=device)
        return _Rows(seq_BC=seq_BC.to(device),
                     pad_B=torch.tensor([P - len(p) for p in prompts], device=device),
                     index_B=torch.arange(num, device=device), n_B=zeros_B + P,
                     cached_B=zeros_B.clone(),
                     draft_BD=torch.full((num, D), self.rules.pad_id, dtype=torch.long,
                                         device=device),
                     has_draft_B=torch.zeros(num, dtype=torch.bool, device=device),
                     draft_probs_BDV=None, forwards_B=zeros_B.clone(),
                     commit_step_BC=torch.full((num, C), -1, dtype=torch.long, device=device))

    def _chunk(self, rows: _Rows) -> _Chunk:
        """Each row's clean columns ``[cached, n + D)`` (drafts at ``n ..``), then ``D + 1``
        draft blocks of ``D + 1`` [MASK]; filler after a shorter row's chunk."""
        D, device = self.D, rows.seq_BC.device
        M = K = D + 1
        clean_B = rows.n_B + D - rows.cached_B
        width = int(clean_B.max()) + K * M
        w_W = torch.arange(width, device=device)
        col_BW = rows.cached_B[:, None] + w_W
        is_clean_BW = w_W < clean_B[:, None]
        j_BW = w_W - clean_B[:, None]  # index inside the draft blocks
        is_block_BW = (j_BW >= 0) & (j_BW < K * M)
        block_BW, in_block_BW = j_BW.clamp(min=0) // M, j_BW.clamp(min=0) % M
        # clean tokens: committed columns, then the drafts
        drafted_BC = rows.seq_BC.clone()
        draft_cols_BD = rows.n_B[:, None] + torch.arange(D, device=device)
        drafted_BC.scatter_(1, draft_cols_BD, rows.draft_BD)
        clean_tok_BW = drafted_BC.gather(1, col_BW.clamp(max=drafted_BC.shape[1] - 1))
        tokens_BW = torch.where(is_clean_BW, clean_tok_BW, torch.where(
            is_block_BW, torch.full_like(col_BW, self.rules.mask_id), self.rules.pad_id))
        block_col_BW = rows.n_B[:, None] + block_BW + in_block_BW
        pos_BW = torch.where(is_clean_BW, col_BW, torch.where(is_block_BW, block_col_BW, 0))
        pos_BW = (pos_BW - rows.pad_B[:, None]).clamp(min=0)
        verify_BK = rows.n_B[:, None] - 1 + torch.arange(K, device=device) - rows.cached_B[:, None]
        draft_BKD = (clean_B[:, None, None] + torch.arange(K, device=device)[:, None] * M
                     + torch.arange(D, device=device))
        logit_index_BN = torch.cat([verify_BK, draft_BKD.reshape(rows.num, K * D)], dim=1)
        mask = self._mask(rows, clean_B, width, is_clean_BW, is_block_BW, block_BW)
        return _Chunk(tokens_BW, pos_BW, mask, logit_index_BN)

    def _mask(self, rows: _Rows, clean_B, width: int, is_clean_BW, is_block_BW,
              block_BW) -> torch.Tensor:
        """megatron mask ``[b, 1, W, S]`` (True = masked): the training predicate on the slots
        (cached columns, then the chunk written at ``cached``)."""
        device = rows.seq_BC.device
        key_len = int((rows.cached_B + width).max())
        s_S = torch.arange(key_len, device=device)
        w_S = s_S - rows.cached_B[:, None]  # chunk position of each slot (< 0: cached)
        in_chunk_BS = (w_S >= 0) & (w_S < width)
        w_idx_BS = w_S.clamp(0, width - 1)
        chunk_clean_BS = is_clean_BW.gather(1, w_idx_BS) & in_chunk_BS
        chunk_block_BS = is_block_BW.gather(1, w_idx_BS) & in_chunk_BS
        clean_BS = (s_S >= rows.pad_B[:, None]) & ((w_S < 0) | chunk_clean_BS)
        block_id_BS = torch.where(chunk_block_BS,
                                  rows.n_B[:, None] + block_BW.gather(1, w_idx_BS), s_S)
        tokens = MaskTokens(document_BS=torch.zeros_like(block_id_BS), block_BS=block_id_BS,
                            clean_BS=clean_BS)
        real_BS = clean_BS | chunk_block_BS
        q_BW = rows.cached_B[:, None] + torch.arange(width, device=device)
        rows_B11 = torch.arange(rows.num, device=device)[:, None, None]
        allowed = make_mask_mod(_PREDICATE, tokens)(
            rows_B11, torch.zeros((), dtype=torch.long, device=device), q_BW[:, :, None],
            s_S[None, None, :])
        allowed = allowed & real_BS[:, None, :]
        query_real_BW = real_BS.gather(1, q_BW)
        allowed = torch.where(query_real_BW[:, :, None], allowed,
                              s_S[None, None, :] == q_BW[:, :, None])
        return ~allowed[:, None]

    # -- decisions ------------------------------------------------------------------------------

    def _accept_greedy(self, rows: _Rows, verify_BKV) -> tuple[torch.Tensor, torch.Tensor]:
        """(accepted drafts ``m``, the ``K`` tokens whose first ``m + 1`` are committed)."""
        ar_BK = verify_BKV.argmax(dim=-1)
        match_BD = (rows.draft_BD == ar_BK[:, :self.D]) & rows.has_draft_B[:, None]
        return match_BD.long().cumprod(dim=1).sum(dim=1), ar_BK

    def _accept_sampled(self, rows: _Rows, verify_BKV, generator):
        """Speculative sampling: accept ``d_i`` with probability ``min(1, p/q)``; the token after
        the accepted ones is drawn from the residual ``max(p - q, 0)`` (a rejection) or from
        ``p`` (every draft accepted, or no draft)."""
        D = self.D
        p_BKV = torch.softmax(verify_BKV / self.cfg.temperature, dim=-1)
        tokens_BK = torch.cat([rows.draft_BD, rows.draft_BD[:, :1]], dim=1)
        if rows.draft_probs_BDV is None:
            m_B = torch.zeros(rows.num, dtype=torch.long, device=p_BKV.device)
        else:
            q_BDV = rows.draft_probs_BDV
            p_d_BD = p_BKV[:, :D].gather(-1, rows.draft_BD[..., None])[..., 0]
            q_d_BD = q_BDV.gather(-1, rows.draft_BD[..., None])[..., 0]
            u_BD = torch.rand(rows.draft_BD.shape, generator=generator, device=p_BKV.device)
            accept_BD = (u_BD * q_d_BD < p_d_BD) & rows.has_draft_B[:, None]
            m_B = accept_BD.long().cumprod(dim=1).sum(dim=1)
        at_m_BV = p_BKV.gather(1, m_B[:, None, None].expand(-1, 1, p_BKV.shape[-1]))[:, 0]
        if rows.draft_probs_BDV is not None:
            rejected_B = m_B < D
            q_m_BV = q_BDV.gather(1, m_B.clamp(max=D - 1)[:, None, None].expand(
                -1, 1, q_BDV.shape[-1]))[:, 0]
            residual_BV = (at_m_BV - q_m_BV).clamp(min=0)
            usable_B1 = rejected_B[:, None] & (residual_BV.sum(-1, keepdim=True) > 0)
            at_m_BV = torch.where(usable_B1, residual_BV, at_m_BV)
        final_B = torch.multinomial(at_m_BV, 1, generator=generator)[:, 0]
        return m_B, tokens_BK.scatter(1, m_B[:, None], final_B[:, None])

    def _next_drafts(self, rows: _Rows, drafts_BKDV, m_B, generator) -> None:
        """The drafts of block ``m`` (``m`` drafts accepted): argmax, or drawn at the
        temperature (their distributions kept for the next acceptance test)."""
        chosen_BDV = drafts_BKDV.gather(1, m_B[:, None, None, None].expand(
            -1, 1, *drafts_BKDV.shape[2:]))[:, 0]
        if self.cfg.temperature == 0:
            rows.draft_BD = chosen_BDV.argmax(dim=-1)
        else:
            q_BDV = torch.softmax(chosen_BDV / self.cfg.temperature, dim=-1)
            b, D, V = q_BDV.shape
            rows.draft_BD = torch.multinomial(q_BDV.reshape(b * D, V), 1,
                                              generator=generator).view(b, D)
            rows.draft_probs_BDV = q_BDV
        rows.has_draft_B = torch.ones_like(rows.has_draft_B)

    def _commit(self, rows: _Rows, m_B, tokens_BK, seq_end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the accepted tokens (cut at ``seq_end`` and after a stop token); the rows
        done, and their end column."""
        K, device = self.D + 1, rows.seq_BC.device
        k_K = torch.arange(K, device=device)
        count_B = torch.minimum(m_B + 1, seq_end - rows.n_B)
        valid_BK = k_K < count_B[:, None]
        is_stop_BK = torch.isin(tokens_BK, self._stops_S) & valid_BK
        has_stop_B = is_stop_BK.any(dim=1)
        first_stop_B = torch.argmax(is_stop_BK.int(), dim=1)
        count_B = torch.where(has_stop_B, first_stop_B + 1, count_B)
        valid_BK = k_K < count_B[:, None]
        cols_BK = (rows.n_B[:, None] + k_K).clamp(max=rows.seq_BC.shape[1] - 1)
        old_BK = rows.seq_BC.gather(1, cols_BK)
        rows.seq_BC.scatter_(1, cols_BK, torch.where(valid_BK, tokens_BK, old_BK))
        old_step_BK = rows.commit_step_BC.gather(1, cols_BK)
        rows.commit_step_BC.scatter_(1, cols_BK, torch.where(
            valid_BK, rows.forwards_B[:, None] - 1, old_step_BK))
        rows.n_B = rows.n_B + count_B
        rows.cached_B = rows.n_B - 1  # roll back: what follows the new pending column is stale
        return has_stop_B | (rows.n_B >= seq_end), has_stop_B

    def step(self, rows: _Rows, seq_end: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward: verify the drafts, commit, draft again. Returns (done, at a stop)."""
        chunk = self._chunk(rows)
        logits_BNV = self.backend.forward(chunk.tokens_BW, chunk.positions_BW, chunk.mask_B1WS,
                                          write_start_B=rows.cached_B,
                                          logit_index_BN=chunk.logit_index_BN)
        self.num_model_calls += 1
        rows.forwards_B += 1
        K, D = self.D + 1, self.D
        verify_BKV = logits_BNV[:, :K]
        drafts_BKDV = logits_BNV[:, K:].reshape(rows.num, K, D, -1)
        if self.cfg.temperature == 0:
            m_B, tokens_BK = self._accept_greedy(rows, verify_BKV)
        else:
            m_B, tokens_BK = self._accept_sampled(rows, verify_BKV, generator)
        done_B, at_stop_B = self._commit(rows, m_B, tokens_BK, seq_end)
        self._next_drafts(rows, drafts_BKDV, m_B, generator)
        return done_B, at_stop_B

    @torch.no_grad()
    def generate(self, prompts: list[list[int]]) -> list[Completion]:
        """Completions for one batch of prompts (token ids), in order."""
        self.check_prompts(prompts)
        start_time = time.perf_counter()
        P, D = max(len(p) for p in prompts), self.D
        seq_end = P + min(self.cfg.max_new_tokens, self.rules.max_positions - P)
        C = seq_end + D + (D + 1) ** 2 + 1
        rows = self._rows(prompts, P, C)
        self._stops_S = torch.tensor(self.stops, dtype=torch.long, device=rows.seq_BC.device)
        generator = None
        if self.cfg.temperature > 0:
            generator = torch.Generator(device=self.backend.device).manual_seed(self.cfg.seed)
        results: list[Completion | None] = [None] * len(prompts)
        with self.backend.session(capacity=C, use_cache=True):
            while rows.num:
                done_B, at_stop_B = self.step(rows, seq_end, generator)
                if not bool(done_B.any()):
                    continue
                now = time.perf_counter() - start_time
                for r in done_B.nonzero()[:, 0].tolist():
                    end = int(rows.n_B[r])
                    results[int(rows.index_B[r])] = Completion(
                        tokens=rows.seq_BC[r, P:end].tolist(),
                        num_forwards=int(rows.forwards_B[r]), seconds=now,
                        stopped_at_eos=bool(at_stop_B[r]),
                        step_map=rows.commit_step_BC[r, P:end].tolist())
                keep_B = (~done_B).nonzero()[:, 0]
                rows.keep(keep_B)
                self.backend.select_rows(keep_B)
        return results
