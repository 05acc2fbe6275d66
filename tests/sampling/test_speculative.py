"""Self-speculative decoding is lossless: greedy output equals the AR decode token for token,
sampling follows the AR distribution, and the KV cache after a roll-back equals a fresh prefill."""

import dataclasses

import pytest
import torch

from megatron_diffusion.errors import UsageError
from megatron_diffusion.sampling.backend import ModelBackend
from megatron_diffusion.sampling.config import SamplerConfig
from megatron_diffusion.sampling.sampler import BlockSampler
from megatron_diffusion.sampling.speculative import SpeculativeSampler
from tests.helpers import MASK_ID, VOCAB
from tests.sampling._helpers import prompts, rules, tiny_model

SPEC_RULES = dict(clean_stream="causal", logit_shift=True, max_positions=128)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def ar_decode(model, batch, max_new=20, **rule_changes):
    cfg = SamplerConfig(max_new_tokens=max_new, ar_baseline=True).validate()
    return BlockSampler(ModelBackend(model), rules(**{**SPEC_RULES, **rule_changes}),
                        cfg).generate(batch)


def spec_decode(model_or_backend, batch, draft_len, max_new=20, **rule_changes):
    cfg = SamplerConfig(max_new_tokens=max_new, strategy="speculative",
                        draft_len=draft_len).validate()
    backend = (model_or_backend if hasattr(model_or_backend, "session")
               else ModelBackend(model_or_backend))
    sampler = SpeculativeSampler(backend, rules(**{**SPEC_RULES, **rule_changes}), cfg)
    return sampler, sampler.generate(batch)


class OracleDrafts:
    """A backend whose draft logits are replaced by the reference AR continuation, each draft
    token wrong with probability ``p_wrong``: rejections at every draft position, and full
    acceptances, in one decode. The verifying (clean) logits are the model's own."""

    def __init__(self, inner, reference: list[list[int]], num_verify: int, p_wrong: float,
                 seed: int = 0):
        self.inner, self.reference, self.K = inner, reference, num_verify
        self.p_wrong, self.gen = p_wrong, torch.Generator().manual_seed(seed)
        self.supports_cache, self.device = True, inner.device
        self.live = list(range(len(reference)))

    @property
    def cache(self):
        return self.inner.cache

    def session(self, capacity, use_cache):
        self.live = list(range(len(self.reference)))  # a new generation: every row is live
        return self.inner.session(capacity, use_cache)

    def select_rows(self, index):
        self.live = [self.live[i] for i in index.tolist()]
        self.inner.select_rows(index)

    def forward(self, tokens, positions, mask, *, write_start_B, logit_index_BN):
        logits = self.inner.forward(tokens, positions, mask, write_start_B=write_start_B,
                                    logit_index_BN=logit_index_BN)
        for r, row in enumerate(self.live):
            ref = self.reference[row]
            for n in range(self.K, logit_index_BN.shape[1]):
                target = int(positions[r, logit_index_BN[r, n]]) + 1
                token = ref[target] if target < len(ref) else 0
                if torch.rand((), generator=self.gen) < self.p_wrong:
                    token = (token + 1) % (VOCAB - 1)  # never [MASK] (the last id)
                logits[r, n] = -30.0
                logits[r, n, token] = 30.0
        return logits


def per_forward_counts(completion) -> list[int]:
    return torch.bincount(torch.tensor(completion.step_map)).tolist()


@pytest.mark.parametrize("draft_len", [1, 3, 8])
def test_greedy_equals_ar_decode_on_a_random_model(model, draft_len):
    # batch of prompts shorter and longer than a block, left-padded; drafts of a random model
    # are mostly rejected
    batch = prompts([2, 5, 11, 3])
    ar = ar_decode(model, batch)
    _, spec = spec_decode(model, batch, draft_len)
    assert [c.tokens for c in spec] == [c.tokens for c in ar]
    assert all(len(c.tokens) == 20 for c in spec)


@pytest.mark.parametrize("draft_len", [2, 3, 5, 8])
def test_greedy_equals_ar_decode_with_forced_rejections_at_every_position(model, draft_len):
    batch = prompts([3, 9, 6], seed=2)
    ar = ar_decode(model, batch, max_new=40)
    reference = [p + c.tokens for p, c in zip(batch, ar)]
    backend = OracleDrafts(ModelBackend(model), reference, draft_len + 1, p_wrong=0.15,
                           seed=draft_len)
    sampler, spec = spec_decode(backend, batch, draft_len, max_new=40)
    assert [c.tokens for c in spec] == [c.tokens for c in ar]
    counts = [k for c in spec for k in per_forward_counts(c)]
    # every acceptance length 0 .. D occurred (1 .. D + 1 tokens per forward)
    assert set(counts) == set(range(1, draft_len + 2))
    assert sampler.num_model_calls < 40  # rows finish in fewer forwards than tokens
    assert all(c.num_forwards == len(per_forward_counts(c)) for c in spec)


def test_rows_advance_independently(model):
    # one row's drafts are all right, the other's all wrong: they end at different forwards
    batch = prompts([4, 7], seed=5)
    ar = ar_decode(model, batch, max_new=24)
    good = OracleDrafts(ModelBackend(model), [p + c.tokens for p, c in zip(batch, ar)], 4, 0.0)
    good.reference[1] = [0] * 64  # row 1 drafts zeros
    _, spec = spec_decode(good, batch, 3, max_new=24)
    assert [c.tokens for c in spec] == [c.tokens for c in ar]
    # row 0: 1 token, then 4 per forward (1 + ceil(23 / 4)); row 1: one token per forward
    assert (spec[0].num_forwards, spec[1].num_forwards) == (7, 24)


def test_stop_token_inside_an_accepted_draft(model):
    batch = prompts([5, 8], seed=7)
    free = ar_decode(model, batch, max_new=30)
    stop = free[0].tokens[6]  # a token row 0 generates mid-way
    stop_rules = dataclasses.replace(rules(**SPEC_RULES), stop_ids=(stop,))
    ar = BlockSampler(ModelBackend(model), stop_rules,
                      SamplerConfig(max_new_tokens=30, ar_baseline=True).validate()).generate(batch)
    assert ar[0].stopped_at_eos and ar[0].tokens[-1] == stop
    reference = [p + c.tokens for p, c in zip(batch, free)]  # drafts run past the stop
    backend = OracleDrafts(ModelBackend(model), reference, 5, p_wrong=0.0)
    cfg = SamplerConfig(max_new_tokens=30, strategy="speculative", draft_len=4).validate()
    spec = SpeculativeSampler(backend, stop_rules, cfg).generate(batch)
    assert [c.tokens for c in spec] == [c.tokens for c in ar]
    assert [c.stopped_at_eos for c in spec] == [c.stopped_at_eos for c in ar]
    # the stop was committed together with tokens before it, in one forward
    assert per_forward_counts(spec[0])[-1] > 1


def _fresh_prefill_keys(model, seq_BC, pad_B, length: int):
    """Layer-1 keys of a causal prefill of columns ``[0, length)`` (left padding masked)."""
    backend = ModelBackend(model)
    cols = torch.arange(length)
    real = cols[None, :] >= pad_B[:, None]
    allowed = (cols[None, :, None] >= cols[None, None, :]) & real[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool)[None]
    positions = (cols[None, :] - pad_B[:, None]).clamp(min=0)
    with backend.session(capacity=length, use_cache=True):
        backend.forward(seq_BC[:, :length], positions, ~allowed[:, None],
                        write_start_B=torch.zeros_like(pad_B),
                        logit_index_BN=torch.zeros(len(pad_B), 1, dtype=torch.long))
        return {k: v.clone() for k, v in backend.cache.keys.items()}


def test_cache_after_rollback_equals_a_fresh_prefill(model):
    batch = prompts([3, 9], seed=11)
    ar = ar_decode(model, batch, max_new=30)
    backend = OracleDrafts(ModelBackend(model), [p + c.tokens for p, c in zip(batch, ar)], 4,
                           p_wrong=0.3, seed=1)
    cfg = SamplerConfig(max_new_tokens=30, strategy="speculative", draft_len=3).validate()
    sampler = SpeculativeSampler(backend, rules(**SPEC_RULES), cfg)
    P = 9
    rows = sampler._rows(batch, P, C=80)
    sampler._stops_S = torch.tensor([], dtype=torch.long)
    rollbacks = 0
    with backend.session(capacity=80, use_cache=True):
        for _ in range(6):
            before = rows.n_B.clone()
            sampler.step(rows, seq_end=P + 30, generator=None)
            rollbacks += int(((rows.n_B - before) < 4).sum())
        cached = {k: v.clone() for k, v in backend.cache.keys.items()}
        cached_B, seq_BC, pad_B = rows.cached_B.clone(), rows.seq_BC.clone(), rows.pad_B.clone()
    assert rollbacks > 0
    fresh = _fresh_prefill_keys(model, seq_BC, pad_B, int(cached_B.max()))
    for layer, keys in fresh.items():
        for r in range(len(batch)):
            lo, hi = int(pad_B[r]), int(cached_B[r])
            torch.testing.assert_close(cached[layer][lo:hi, r], keys[lo:hi, r],
                                       atol=1e-5, rtol=0)


def _ar_probs(model, contexts: list[list[int]], temperature: float) -> torch.Tensor:
    """Next-token distributions of the clean stream (the AR model) after each context."""
    sampler = BlockSampler(ModelBackend(model), rules(**SPEC_RULES),
                           SamplerConfig(max_new_tokens=1, ar_baseline=True).validate())
    captured = []

    class Capture:
        def __init__(self, inner):
            self.inner, self.supports_cache, self.device = inner, True, inner.device

        def session(self, capacity, use_cache):
            return self.inner.session(capacity, use_cache)

        def select_rows(self, index):
            self.inner.select_rows(index)

        def forward(self, *args, **kwargs):
            logits = self.inner.forward(*args, **kwargs)
            captured.append(logits[:, 0])
            return logits

    sampler.backend = Capture(sampler.backend)
    sampler.generate(contexts)
    return torch.softmax(captured[0] / temperature, dim=-1)


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    expected = probs * counts.sum()
    keep = expected >= 5  # pool the rare cells
    stat = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    rest_obs, rest_exp = counts[~keep].sum(), expected[~keep].sum()
    if rest_exp > 0:
        stat = stat + (rest_obs - rest_exp) ** 2 / rest_exp
    return float(stat), int(keep.sum())


def test_speculative_sampling_follows_the_ar_distribution(model):
    T, N, prompt = 0.7, 6000, prompts([5], seed=4)[0]
    cfg = SamplerConfig(max_new_tokens=3, strategy="speculative", draft_len=2,
                        temperature=T, seed=123, ignore_eos=True).validate()
    sampler = SpeculativeSampler(ModelBackend(model), rules(**SPEC_RULES), cfg)
    out = sampler.generate([prompt] * N)
    x = torch.tensor([c.tokens for c in out])
    forwards = torch.tensor([c.num_forwards for c in out])
    # both paths of the acceptance test ran: drafts accepted (2 forwards) and rejected (3)
    assert (forwards == 2).any() and (forwards == 3).any()
    p1 = _ar_probs(model, [prompt], T)[0]
    p2_given_1 = _ar_probs(model, [prompt + [v] for v in range(VOCAB)], T)
    p2 = p1 @ p2_given_1  # exact marginal of the second token
    # third token: its exact marginal over the 61 x 61 two-token prefixes
    pairs = [[a, b] for a in range(VOCAB) for b in range(VOCAB)]
    p3_given_12 = _ar_probs(model, [prompt + ab for ab in pairs], T)
    p12 = (p1[:, None] * p2_given_1).reshape(-1)
    p3 = p12 @ p3_given_12
    assert p1[MASK_ID] == 0
    for column, probs in ((0, p1), (1, p2), (2, p3)):
        counts = torch.bincount(x[:, column], minlength=VOCAB).double()
        stat, cells = _chi_square(counts, probs.double())
        # chi-square with `cells` degrees of freedom: mean cells, sd sqrt(2 cells); 6 sd
        assert stat < cells + 6 * (2 * cells) ** 0.5, (column, stat, cells)


def test_refuses_a_model_without_an_exact_ar_stream(model):
    cfg = SamplerConfig(strategy="speculative").validate()
    for bad in (dict(clean_stream="block_causal", logit_shift=True),
                dict(clean_stream="causal", logit_shift=False)):
        with pytest.raises(UsageError, match="--strategy speculative: needs a block-mode model"):
            SpeculativeSampler(ModelBackend(model), rules(**bad), cfg)
    with pytest.raises(UsageError, match="--draft-len"):
        SamplerConfig(strategy="speculative", draft_len=0).validate()
    with pytest.raises(UsageError, match="--self-correct"):
        SamplerConfig(strategy="speculative", self_correct=True).validate()
