"""Seed Diffusion 3.4's decoding of a model trained without blocks (``bidirectional``):
block k from p(x_Bk | x_<k) over prompt + finished blocks + current block, never a future
position; finished blocks cached when final (approximate), or recomputed (exact)."""

import pytest
import torch

from megatron_diffusion.errors import UsageError
from megatron_diffusion.sampling.backend import ModelBackend
from megatron_diffusion.sampling.config import SamplerConfig
from megatron_diffusion.sampling.sampler import BlockSampler
from tests.helpers import MASK_ID
from tests.sampling._helpers import prompts, rules, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


class Logits:
    """A backend that keeps every forward's logits (all rows, the block's positions)."""

    def __init__(self, inner):
        self.inner, self.logits = inner, []
        self.supports_cache, self.device = inner.supports_cache, inner.device

    def session(self, capacity, use_cache):
        return self.inner.session(capacity, use_cache)

    def select_rows(self, index):
        self.inner.select_rows(index)

    def forward(self, tokens, positions, mask, **kw):
        out = self.inner.forward(tokens, positions, mask, **kw)
        self.logits.append(out.clone())
        return out


def decode(model, batch, **cfg):
    """(completions, logits of every forward)."""
    backend = Logits(ModelBackend(model))
    cfg = SamplerConfig(strategy="fixed", **cfg)
    out = BlockSampler(backend, rules(mode="bidirectional"), cfg).generate(batch)
    return out, backend.logits


@pytest.mark.parametrize("kv_cache", [True, False])
def test_first_block_does_not_depend_on_max_new_tokens(model, kv_cache):
    """Future blocks are never fed, so block 0 is decoded from the same logits for 8 or 48 new
    tokens (with the future [MASK]s fed, as 'full' does, its logits change)."""
    batch = prompts([5, 9, 3, 7], seed=11)
    short, short_logits = decode(model, batch, max_new_tokens=8, block_size=4, kv_cache=kv_cache)
    long, long_logits = decode(model, batch, max_new_tokens=48, block_size=4, kv_cache=kv_cache)
    assert [c.tokens for c in short] == [c.tokens[:8] for c in long]
    for a, b in zip(short_logits[:8], long_logits[:8]):  # the steps of blocks 0 and 1
        assert torch.allclose(a, b, atol=1e-5)
    full = [decode(model, batch, max_new_tokens=n, block_size=4, bidirectional_context="full")[1]
            for n in (8, 48)]
    assert (full[0][0] - full[1][0])[..., :MASK_ID].abs().max() > 1e-3


def hand_logits(model, prompt, generated, B, cached):
    """Block k's logits from one forward over prompt + blocks < k + B [MASK]. ``cached``: a
    clean column of segment s (0 = the prompt, j + 1 = generated block j) attends the clean
    columns of segments <= s only — what keys cached when their block was final saw; the block
    attends everything. Else all-to-all (the exact conditional)."""
    out = []
    for k in range(len(generated) // B):
        ids = torch.tensor(prompt + generated[:k * B] + [MASK_ID] * B)[None]
        n, P = ids.shape[1], len(prompt)
        seg = torch.tensor([0] * P + [1 + (i - P) // B for i in range(P, n)])
        allowed = torch.ones(n, n, dtype=torch.bool)
        if cached:
            clean = torch.arange(n) < n - B
            allowed[clean] = (seg[None, :] <= seg[clean][:, None]) & clean[None, :]
        with torch.no_grad():
            out.append(model(ids, torch.arange(n)[None], ~allowed[None, None])[0, -B:])
    return out


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize("B", [3, 4])
def test_prefix_decode_equals_hand_built_forwards(model, kv_cache, B):
    """Any block size: the cached path = the segment-causal clean prefix (the approximation,
    spelled out), the uncached path = the exact bidirectional conditional p(x_Bk | x_<k)."""
    prompt = prompts([6], seed=3)[0]
    (out,), logits = decode(model, [prompt], max_new_tokens=3 * B, block_size=B,
                            steps_per_block=1, kv_cache=kv_cache)
    hand = hand_logits(model, prompt, out.tokens, B, cached=kv_cache)
    assert len(logits) == 3
    for got, want in zip(logits, hand):
        assert torch.allclose(got[0], want[:, :got.shape[-1]], atol=1e-4)
    other = hand_logits(model, prompt, out.tokens, B, cached=not kv_cache)
    assert (other[2][:, :MASK_ID] - logits[2][0, :, :MASK_ID]).abs().max() > 1e-4


def test_cache_is_on_by_default_and_full_turns_it_off(model):
    r = rules(mode="bidirectional")
    prefix = BlockSampler(ModelBackend(model), r, SamplerConfig(block_size=4))
    full = BlockSampler(ModelBackend(model), r,
                        SamplerConfig(block_size=4, bidirectional_context="full"))
    assert prefix.use_cache and not full.use_cache and full.full_sequence
    ar = BlockSampler(ModelBackend(model), r, SamplerConfig(ar_baseline=True, max_new_tokens=3))
    assert ar.cfg.block_size == 1 and len(ar.generate(prompts([4]))[0].tokens) == 3
    with pytest.raises(UsageError, match="--ar-baseline"):
        SamplerConfig(ar_baseline=True, bidirectional_context="full").resolve("bidirectional", 4)
    with pytest.raises(UsageError, match="--bidirectional-context"):
        SamplerConfig(bidirectional_context="future").validate()
