"""Block-wise parallel decoding with an exact KV cache (Seed Diffusion 3.4, docs/method.md 8).

The generation after the prompt is cut into blocks of ``B`` tokens, decoded left to right. A
block starts as ``B`` [MASK] tokens; every step predicts all of them in parallel and a commit
rule (``strategies``) makes some final; when none is left the next block starts. One forward per
step: the first step of a block also feeds the previous, now final block as clean context (the
prefill, then SDAR's commit pass), whose keys/values are exactly training's, so a block's logits
equal the training forward's. Rows of a batch advance independently, each at its own block.

docs/sampling.md "How a block is decoded" has the details: the other attention modes
(``causal``, ``bidirectional`` with ``prefix``/``full`` context), the logit shift's pending
column, batches and stop tokens, and self-correction with its revisit window.
"""

import time
from dataclasses import dataclass, fields

import torch

from megatron_diffusion.errors import UsageError
from megatron_diffusion.sampling import strategies
from megatron_diffusion.sampling.backend import as_backend
from megatron_diffusion.sampling.config import SamplerConfig
from megatron_diffusion.sampling.masks import ChunkAttention, chunk_mask, clean_block_ids


@dataclass(frozen=True)
class ModelRules:
    """What the sampler needs to know about the trained model."""

    mode: str
    """Training attention mode: ``block``, ``causal`` or ``bidirectional``."""
    clean_stream: str
    """Block mode: ``block_causal`` or ``causal``."""
    training_block_size: int
    logit_shift: bool
    """Output ``i - 1`` predicts token ``i`` (model.logit_shift, or an AR-objective model)."""
    mask_id: int
    eos_id: int
    """The tokenizer's EOS."""
    pad_id: int
    max_positions: int
    """model.max_position_embeddings: prompt + generation must fit."""
    stop_ids: tuple[int, ...] | None = None
    """Ids any of which ends a row (meta.json ``generation.stop_token_ids``, ``--stop-token``);
    None = ``(eos_id,)``."""

    @property
    def stops(self) -> tuple[int, ...]:
        return (self.eos_id,) if self.stop_ids is None else tuple(self.stop_ids)

    @staticmethod
    def from_run_config(cfg, eos_id: int, pad_id: int,
                        stop_ids: tuple[int, ...] | None = None) -> "ModelRules":
        return ModelRules(mode=cfg.attention.mode, clean_stream=cfg.attention.clean_stream,
                          training_block_size=cfg.attention.block_size,
                          logit_shift=cfg.model.logit_shift or cfg.loss.objective == "ar",
                          mask_id=cfg.model.mask_token_id, eos_id=eos_id, pad_id=pad_id,
                          max_positions=cfg.model.max_position_embeddings, stop_ids=stop_ids)


def check_prompt_ids(prompts: list[list[int]], max_positions: int) -> None:
    """Refuse (one line) an empty prompt or one that leaves no room in the context."""
    for i, ids in enumerate(prompts):
        if len(ids) == 0:
            raise UsageError(f"prompt {i}: empty (encodes to no tokens)")
        if len(ids) >= max_positions:
            raise UsageError(f"prompt {i}: {len(ids)} tokens, longer than the context "
                             f"(model.max_position_embeddings={max_positions})")


@dataclass
class Completion:
    """One decoded row."""

    tokens: list[int]
    """Generated ids after the prompt, up to and including the first stop token (if any)."""
    num_forwards: int
    """Forwards in which this row had positions to decide."""
    seconds: float
    """Time from the start of its batch until this row was done (its latency)."""
    stopped_at_eos: bool
    """The row ended at a stop token (``ModelRules.stops``), its last id."""
    step_map: list[int]
    """For each token of ``tokens``, the row's forward (0 = its first) whose decision wrote it
    last: its commit step (Seed Diffusion 3.2's trajectories; with self-correction, the step of
    the last change)."""


@dataclass
class _Rows:
    """The live rows of a batch (finished rows are dropped from every tensor at once)."""

    seq_BC: torch.Tensor
    """Token buffer: left-padded prompt, the generation ([MASK] until committed), right padding."""
    pos_BC: torch.Tensor
    """RoPE positions, 0 at each prompt's first token."""
    pad_B: torch.Tensor
    """Pad columns at the left of each row."""
    blocks_BC: torch.Tensor
    """Clean-stream block id of every column (``masks.clean_block_ids``)."""
    index_B: torch.Tensor
    """Original index of each live row in the batch."""
    block_start_B: torch.Tensor
    """First column of the row's current block."""
    cached_B: torch.Tensor
    """Columns of the row whose keys/values are final in the cache."""
    step_B: torch.Tensor
    """Forwards spent on the current block."""
    corrections_B: torch.Tensor
    """Self-correction: replacements made in the current block."""
    settled_B: torch.Tensor
    """Self-correction: the current block is final."""
    forwards_B: torch.Tensor
    """Forwards in which the row had positions to decide."""
    commit_step_BC: torch.Tensor
    """The row's forward that last wrote each column (-1: never)."""

    def keep(self, index_B: torch.Tensor) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name)[index_B])

    @property
    def num(self) -> int:
        return self.seq_BC.shape[0]


@dataclass(frozen=True)
class _Layout:
    """Columns of a batch's token buffer (``masks`` module docstring)."""

    P: int
    """Prompt columns (left-padded to the longest prompt)."""
    seq_end: int
    """End of the generation (``P + max_new_tokens``, or the context length)."""
    gen_end: int
    """End of the last whole block; ``[seq_end, gen_end)`` is right padding."""
    C: int
    """Buffer columns, scratch included."""


class BlockSampler:
    """Decode batches of token-id prompts with one backend and one resolved config."""

    def __init__(self, model, rules: ModelRules, cfg: SamplerConfig):
        """``model``: a ``DiffusionGPTModel``, a backend, or any callable with the model's
        forward signature ``(input_ids, position_ids, attention_mask) -> logits``. ``cfg``:
        validated settings (``SamplerConfig.validate``; not re-checked here), resolved against
        ``rules`` (the checks that need the model)."""
        self.backend = as_backend(model)
        self.rules = rules
        self.cfg = cfg.resolve(rules.mode, rules.training_block_size)
        self.use_cache = self.cfg.kv_cache and self.backend.supports_cache
        self.full_sequence = (rules.mode == "bidirectional"
                              and self.cfg.bidirectional_context == "full")
        """Every step feeds the whole generation (future blocks as [MASK]); else only up to the
        current block's end."""
        self.attention = ChunkAttention.for_model(
            rules.mode, rules.clean_stream,
            prefix_cache=rules.mode == "bidirectional" and self.use_cache)
        self.shift = int(rules.logit_shift)
        if self.cfg.revisit_window and self.shift:
            raise UsageError("--revisit-window: not for a logit-shift model (its window's first "
                             "token would be read from a cached column)")
        self.stops = () if self.cfg.ignore_eos else rules.stops
        """The ids that end a row (none with ``ignore_eos``)."""
        self.num_model_calls = 0
        """Batched forwards run so far (each counts once, whatever the batch size)."""

    def check_prompts(self, prompts: list[list[int]]) -> None:
        check_prompt_ids(prompts, self.rules.max_positions)

    def _rows(self, prompts: list[list[int]], P: int, seq_end: int, C: int) -> _Rows:
        device, num = self.backend.device, len(prompts)
        seq_BC = torch.full((num, C), self.rules.pad_id, dtype=torch.long)
        for i, ids in enumerate(prompts):
            seq_BC[i, P - len(ids):P] = torch.as_tensor(ids, dtype=torch.long)
        seq_BC[:, P:seq_end] = self.rules.mask_id
        pad_B = torch.tensor([P - len(p) for p in prompts], dtype=torch.long, device=device)
        zeros_B = torch.zeros(num, dtype=torch.long, device=device)
        return _Rows(seq_BC=seq_BC.to(device),
                     pos_BC=(torch.arange(C, device=device) - pad_B[:, None]).clamp(min=0),
                     pad_B=pad_B, blocks_BC=clean_block_ids(pad_B, P, C, self.cfg.block_size),
                     index_B=torch.arange(num, device=device), block_start_B=zeros_B + P,
                     cached_B=zeros_B.clone(), step_B=zeros_B.clone(),
                     corrections_B=zeros_B.clone(),
                     settled_B=torch.zeros(num, dtype=torch.bool, device=device),
                     forwards_B=zeros_B.clone(),
                     commit_step_BC=torch.full((num, C), -1, dtype=torch.long, device=device))

    def _chunk(self, rows: _Rows, gen_end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Columns ``[in_start_B, in_end_B)`` each row feeds: the uncached clean columns and
        the block; the whole generation for ``bidirectional_context='full'``; for a causal
        model with logit shift the block minus its last position (whose output would predict
        the next block)."""
        in_start_B = rows.cached_B if self.use_cache else torch.zeros_like(rows.cached_B)
        if self.full_sequence:
            in_end_B = torch.full_like(in_start_B, gen_end)
        else:
            shift = self.shift if self.rules.mode == "causal" else 0
            in_end_B = rows.block_start_B + self.cfg.block_size - shift
        return in_start_B, in_end_B

    def _region(self, rows: _Rows, P: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The columns a step decides, ``[b, N + B]`` (the revisit window of ``N`` columns
        before the block, then the block), which are real (a row's first block has no window),
        and each row's window size. ``N = 0``: the block."""
        N = self.cfg.revisit_window
        offsets_N = torch.arange(-N, self.cfg.block_size, device=rows.block_start_B.device)
        window_B = (rows.block_start_B > P).long() * N
        cols_BN = rows.block_start_B[:, None] + offsets_N
        return cols_BN.clamp(min=0), offsets_N >= -window_B[:, None], window_B

    def _feed(self, rows: _Rows, in_start_B, in_end_B, window_B, region_BN, width: int,
              C: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Buffer columns of each row's ``width`` inputs — its chunk, then noisy copies of its
        revisit window, then filler — and the input index of every decided column's output
        (a block column ``c``: ``c - shift``; a window column: its copy)."""
        w_W = torch.arange(width, device=in_start_B.device)
        len_B1, window_B1 = (in_end_B - in_start_B)[:, None], window_B[:, None]
        copy_BW = (w_W >= len_B1) & (w_W < len_B1 + window_B1)
        source_BW = rows.block_start_B[:, None] - window_B1 + (w_W - len_B1)
        cols_BW = torch.where(copy_BW, source_BW, in_start_B[:, None] + w_W).clamp(max=C - 1)
        index_BN = region_BN - self.shift - in_start_B[:, None]
        N = self.cfg.revisit_window
        if N:
            j_N = torch.arange(region_BN.shape[1], device=in_start_B.device)
            copy_index_BN = (len_B1 + j_N - N + window_B1).clamp(min=0)
            index_BN = torch.where(j_N < N, copy_index_BN, index_BN)
        return cols_BW, index_BN

    def _decide(self, rows: _Rows, block_BN, masked_BN, in_sequence_BN, logits_BNV,
                generator) -> torch.Tensor:
        """The block after this step's commits (and correction)."""
        cfg = self.cfg
        tokens_BN, conf_BN, top1_BN, top1_prob_BN = strategies.propose(
            logits_BNV, cfg.temperature, generator)
        if cfg.strategy == "fixed":
            commit_BN = strategies.select_fixed(masked_BN, conf_BN,
                                                cfg.steps_per_block - rows.step_B + 1)
        else:
            commit_BN = strategies.select_threshold(masked_BN, conf_BN, cfg.threshold)
        new_BN = torch.where(commit_BN, tokens_BN, block_BN)
        if cfg.self_correct:
            allowed_B = rows.corrections_B < cfg.max_corrections_per_block
            fix_BN = strategies.select_correction(~masked_BN & in_sequence_BN, block_BN, top1_BN,
                                                  top1_prob_BN, cfg.correction_threshold,
                                                  allowed_B)
            new_BN = torch.where(fix_BN, top1_BN, new_BN)
            corrected_B = fix_BN.any(dim=1)
            rows.corrections_B += corrected_B
            # final: a step that saw no [MASK] in the block and changed nothing, or the step
            # that filled it when it corrected nothing and no token is below revisit_threshold
            # (then a settling forward would not fire on these probabilities: skip it)
            sure_BN = strategies.token_probability(logits_BNV, new_BN) >= cfg.revisit_threshold
            filled_sure_B = ((new_BN != self.rules.mask_id) & sure_BN | ~in_sequence_BN).all(1)
            rows.settled_B |= (~masked_BN.any(dim=1) | filled_sure_B) & ~corrected_B
        return new_BN

    def _done_at_eos(self, rows: _Rows, block_BN,
                     in_sequence_BN) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows with a stop token in the block and every position before it final; its offset."""
        n = block_BN.shape[1]
        is_eos_BN = torch.isin(block_BN, self._stops_S) & in_sequence_BN  # pad may equal EOS
        first_eos_B = torch.argmax(is_eos_BN.int(), dim=1)
        before_BN = torch.arange(n, device=block_BN.device) < first_eos_B[:, None]
        open_before_B = ((block_BN == self.rules.mask_id) & before_BN).any(dim=1)
        done_B = is_eos_BN.any(dim=1) & ~open_before_B
        if self.cfg.self_correct:
            done_B &= rows.settled_B
        return done_B, first_eos_B

    def _layout(self, prompts: list[list[int]]) -> "_Layout":
        B, N = self.cfg.block_size, self.cfg.revisit_window
        P = max(len(p) for p in prompts)
        seq_end = P + min(self.cfg.max_new_tokens, self.rules.max_positions - P)
        gen_end = P + -(-(seq_end - P) // B) * B  # whole blocks; the tail is right padding
        # + scratch where short chunks' filler and the window's copies are written
        return _Layout(P=P, seq_end=seq_end, gen_end=gen_end, C=gen_end + 2 * B + 2 + N)

    def _next_blocks(self, rows: _Rows) -> None:
        """Rows whose block is final move to their next block (no waiting for the others)."""
        B = self.cfg.block_size
        block_cols_BN = rows.block_start_B[:, None] + torch.arange(B, device=rows.pad_B.device)
        final_B = ~(rows.seq_BC.gather(1, block_cols_BN) == self.rules.mask_id).any(dim=1)
        if self.cfg.self_correct:
            final_B &= rows.settled_B
        # a finished block's clean columns, and the pending column before it, are final
        rows.cached_B = torch.where(final_B, torch.maximum(rows.cached_B, rows.block_start_B),
                                    rows.cached_B)
        rows.block_start_B += B * final_B
        rows.step_B *= ~final_B
        rows.corrections_B *= ~final_B
        rows.settled_B &= ~final_B

    def _forward(self, rows: _Rows, lay: "_Layout", in_start_B, in_end_B, region_BN, window_B,
                 width: int, key_len: int) -> torch.Tensor:
        """One batched forward of every row's chunk; logits ``[b, N + B, V]`` of the region."""
        N = self.cfg.revisit_window
        mask = chunk_mask(self.attention, rows.pad_B, rows.blocks_BC, in_start_B=in_start_B,
                          in_end_B=in_end_B, block_start_B=rows.block_start_B, width=width,
                          key_len=key_len, seq_end=lay.seq_end, window_B=window_B if N else None)
        cols_BW, index_BN = self._feed(rows, in_start_B, in_end_B, window_B, region_BN, width,
                                       lay.C)
        logits_BNV = self.backend.forward(
            rows.seq_BC.gather(1, cols_BW), rows.pos_BC.gather(1, cols_BW), mask,
            write_start_B=in_start_B, logit_index_BN=index_BN)
        # the clean columns fed are now final in the cache (prefill / commit pass)
        rows.cached_B = rows.block_start_B - self.shift
        self.num_model_calls += 1
        rows.step_B += 1
        rows.forwards_B += 1
        return logits_BNV

    def _commit(self, rows: _Rows, lay: "_Layout", region_BN, valid_BN, logits_BNV,
                generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's decisions; the rows done at a stop token, and their end column."""
        N, B = self.cfg.revisit_window, self.cfg.block_size
        block_BN = rows.seq_BC.gather(1, region_BN)
        masked_BN = (block_BN == self.rules.mask_id) & valid_BN
        in_sequence_BN = (region_BN < lay.seq_end) & valid_BN  # not right padding
        new_BN = self._decide(rows, block_BN, masked_BN, in_sequence_BN, logits_BNV, generator)
        if N:  # a changed window token: its block's keys/values are fed again next
            changed_B = (new_BN[:, :N] != block_BN[:, :N]).any(dim=1)
            rows.cached_B = torch.where(
                changed_B, torch.minimum(rows.cached_B, rows.block_start_B - B), rows.cached_B)
        rows.seq_BC.scatter_(1, region_BN, new_BN)
        steps_BN = rows.commit_step_BC.gather(1, region_BN)
        rows.commit_step_BC.scatter_(1, region_BN, torch.where(
            new_BN != block_BN, rows.forwards_B[:, None] - 1, steps_BN))
        done_B, first_eos_B = self._done_at_eos(rows, new_BN, in_sequence_BN)
        return done_B, rows.block_start_B - N + first_eos_B + 1

    @torch.no_grad()
    def generate(self, prompts: list[list[int]]) -> list[Completion]:
        """Completions for one batch of prompts (token ids), in order."""
        self.check_prompts(prompts)
        start_time = time.perf_counter()
        device, lay = self.backend.device, self._layout(prompts)
        rows = self._rows(prompts, lay.P, lay.seq_end, lay.C)
        self._stops_S = torch.tensor(self.stops, dtype=torch.long, device=device)
        generator = None
        if self.cfg.temperature > 0:
            generator = torch.Generator(device=device).manual_seed(self.cfg.seed)
        results: list[Completion | None] = [None] * len(prompts)

        def finish(done_B: torch.Tensor, end_B: torch.Tensor, at_eos: bool) -> None:
            now = time.perf_counter() - start_time
            ends = end_B.tolist()
            for r in done_B.nonzero()[:, 0].tolist():
                row = int(rows.index_B[r])
                results[row] = Completion(tokens=rows.seq_BC[r, lay.P:ends[r]].tolist(),
                                          num_forwards=int(rows.forwards_B[r]), seconds=now,
                                          stopped_at_eos=at_eos,
                                          step_map=rows.commit_step_BC[r, lay.P:ends[r]].tolist())
            keep_B = (~done_B).nonzero()[:, 0]
            rows.keep(keep_B)
            self.backend.select_rows(keep_B)

        with self.backend.session(capacity=lay.C, use_cache=self.use_cache):
            while rows.num:
                self._next_blocks(rows)
                in_start_B, in_end_B = self._chunk(rows, lay.gen_end)
                region_BN, valid_BN, window_B = self._region(rows, lay.P)
                ended_B = rows.block_start_B >= lay.seq_end
                any_ended, width, key_len = torch.stack([
                    ended_B.any().long(), (in_end_B - in_start_B + window_B).max(),
                    in_start_B.max()]).tolist()  # the one host sync before the forward
                if any_ended:
                    finish(ended_B, torch.full_like(ended_B, lay.seq_end, dtype=torch.long),
                           at_eos=False)
                    continue
                key_len = key_len + width if self.use_cache else width
                logits_BNV = self._forward(rows, lay, in_start_B, in_end_B, region_BN, window_B,
                                           width, key_len)
                done_B, end_B = self._commit(rows, lay, region_BN, valid_BN, logits_BNV,
                                             generator)
                if bool(done_B.any()):
                    finish(done_B, end_B, at_eos=True)
        return results
