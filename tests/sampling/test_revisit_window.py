"""Self-correction's revisit window into the previous block: what it fixes, what it costs, and
that the previous block's cached keys/values are recomputed when a token there changes."""

import pytest
import torch

from megatron_diffusion.errors import UsageError
from megatron_diffusion.sampling.backend import ModelBackend
from megatron_diffusion.sampling.config import SamplerConfig
from megatron_diffusion.sampling.masks import ChunkAttention, chunk_mask, clean_block_ids
from megatron_diffusion.sampling.sampler import BlockSampler
from tests.sampling._helpers import prompts, rules, tiny_model
from tests.sampling.test_decoding import SURE, one_hot_logits


class PreviousBlockMistake:
    """First forward (block 0): position 5, the last of block 0 after a 2-token prompt, surely
    predicts the wrong token 3; afterwards every position surely predicts ``20 + position``."""

    def __init__(self):
        self.calls = 0

    def __call__(self, input_ids, position_ids, attention_mask):
        tokens = 20 + position_ids
        if self.calls == 0:
            tokens = torch.where(position_ids == 5, 3, tokens)
        self.calls += 1
        return one_hot_logits(tokens, torch.full(tokens.shape, SURE))


def test_window_corrects_the_previous_block_at_one_settling_forward():
    base = dict(max_new_tokens=12, block_size=4, strategy="threshold", threshold=0.9,
                self_correct=True)
    # window 0 (default): today's rule, the confidently wrong token of block 0 stays; every
    # block is filled and sure in one forward
    kept = BlockSampler(PreviousBlockMistake(), rules(),
                        SamplerConfig(**base, revisit_window=0)).generate([[1, 2]])[0]
    assert kept.tokens == [22, 23, 24, 3] + [20 + p for p in range(6, 14)]
    assert kept.num_forwards == 3
    # window 1: block 1's first forward re-reads position 5 and corrects it; like a correction
    # inside the block, that costs one settling forward of block 1 (docs/sampling.md)
    fixed = BlockSampler(PreviousBlockMistake(), rules(),
                         SamplerConfig(**base, revisit_window=1)).generate([[1, 2]])[0]
    assert fixed.tokens == [20 + p for p in range(2, 14)]
    assert fixed.num_forwards == 4


class ForcedWindowChange:
    """The tiny model, except at position 11 (last of block 0 after an 8-token prompt): read as
    a block position it surely proposes ``X``, read as the revisit window it surely proposes
    ``Y``. Records, per forward, where the chunk was written and the cache before it."""

    X, Y = 7, 9

    def __init__(self, model, window: int):
        self.inner, self.window = ModelBackend(model), window
        self.supports_cache, self.device = True, self.inner.device
        self.write_starts, self.caches = [], []

    def session(self, capacity, use_cache):
        return self.inner.session(capacity, use_cache)

    def select_rows(self, index):
        self.inner.select_rows(index)

    def forward(self, tokens, positions, mask, *, write_start_B, logit_index_BN):
        w = int(write_start_B[0])
        cache = self.inner.cache
        self.write_starts.append(w)
        self.caches.append({k: (cache.keys[k][:w].clone(), cache.values[k][:w].clone())
                            for k in cache.keys} if cache is not None else None)
        logits = self.inner.forward(tokens, positions, mask, write_start_B=write_start_B,
                                    logit_index_BN=logit_index_BN)
        for j, pos in enumerate(positions[0, logit_index_BN[0]].tolist()):
            if pos == 11:
                logits[0, j] = -30.0
                logits[0, j, self.Y if j < self.window else self.X] = 30.0
        return logits


def fresh_prefill(model, tokens: list[int], prompt_len: int, B: int) -> dict:
    """Per-layer keys/values of ``tokens`` fed at once as clean context (the prefill)."""
    backend, w = ModelBackend(model), len(tokens)
    zero = torch.zeros(1, dtype=torch.long)
    with backend.session(capacity=w, use_cache=True):
        mask = chunk_mask(ChunkAttention.for_model("block", "block_causal"), zero,
                          clean_block_ids(zero, prompt_len, w, B), in_start_B=zero,
                          in_end_B=zero + w, block_start_B=zero + w, width=w, key_len=w,
                          seq_end=w)
        backend.forward(torch.tensor([tokens]), torch.arange(w)[None], mask,
                        write_start_B=zero, logit_index_BN=zero[:, None])
        return {k: (backend.cache.keys[k][:w].clone(), backend.cache.values[k][:w].clone())
                for k in backend.cache.keys}


@pytest.fixture(scope="module")
def block_model():
    return tiny_model()


def test_changed_window_token_recomputes_the_previous_blocks_cache(block_model):
    P, B = 8, 4
    prompt = prompts([P], seed=5)[0]
    cfg = dict(max_new_tokens=12, block_size=B, strategy="fixed", steps_per_block=1,
               self_correct=True, correction_threshold=0.99)
    plain = ForcedWindowChange(block_model, window=0)
    out0 = BlockSampler(plain, rules(), SamplerConfig(**cfg)).generate([prompt])[0]
    assert out0.tokens[3] == ForcedWindowChange.X  # no window: the token stays
    forced = ForcedWindowChange(block_model, window=1)
    out = BlockSampler(forced, rules(), SamplerConfig(**cfg, revisit_window=1)).generate(
        [prompt])[0]
    assert out.tokens[3] == ForcedWindowChange.Y  # corrected through the window
    # block 0: fill, settle; block 1: commit pass of block 0 + fill (the change), then the
    # settling step feeds block 0 again from its start (column 8, not 12); block 2: commit pass
    # of block 1 + fill, settle. Same forwards as without the window.
    assert forced.write_starts == [0, 8, 8, 8, 12, 16]
    assert plain.write_starts == [0, 8, 8, 12, 12, 16]
    final = prompt + out.tokens
    checked = 0
    for w, cache in zip(forced.write_starts, forced.caches):
        if w <= P + 3:  # the cached columns do not reach the changed token
            continue
        fresh = fresh_prefill(block_model, final[:w], P, B)
        for layer, (keys, values) in cache.items():
            assert (keys[:, 0] - fresh[layer][0][:, 0]).abs().max() <= 1e-5, (w, layer)
            assert (values[:, 0] - fresh[layer][1][:, 0]).abs().max() <= 1e-5, (w, layer)
        checked += 1
    assert checked == 2
    # the reference path (no cache: everything recomputed every step) gives the same tokens
    uncached = BlockSampler(ForcedWindowChange(block_model, window=1), rules(),
                            SamplerConfig(**cfg, revisit_window=1, kv_cache=False))
    assert uncached.generate([prompt])[0].tokens == out.tokens


@pytest.mark.parametrize("settings, message", [
    (dict(revisit_window=2), "needs --self-correct"),
    (dict(revisit_window=-1, self_correct=True), "expected an integer >= 0"),
])
def test_bad_window_settings_are_refused(settings, message):
    with pytest.raises(UsageError, match=message):
        SamplerConfig(max_new_tokens=8, block_size=4, **settings).validate()


@pytest.mark.parametrize("settings, model, message", [
    (dict(revisit_window=5), {}, "at most the block size 4"),
    (dict(revisit_window=1), dict(mode="causal"), "block-mode model"),
    (dict(revisit_window=1), dict(logit_shift=True), "logit-shift"),
])
def test_window_settings_the_model_cannot_take_are_refused(settings, model, message):
    cfg = SamplerConfig(max_new_tokens=8, block_size=4, self_correct=True, **settings).validate()
    with pytest.raises(UsageError, match=message):
        BlockSampler(PreviousBlockMistake(), rules(**model), cfg)
