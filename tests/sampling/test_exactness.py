"""The cached sampler computes what block-mode training computes, and caching changes no token."""

import pytest
import torch

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model.inputs import model_inputs
from megatron_diffusion.sampling.backend import ModelBackend
from megatron_diffusion.sampling.config import SamplerConfig
from megatron_diffusion.sampling.sampler import BlockSampler
from tests.helpers import MASK_ID
from tests.sampling._helpers import prompts, rules, tiny_model


class Recorder:
    """A backend that remembers, for every forward, the block it predicted and the logits."""

    def __init__(self, inner):
        self.inner, self.records = inner, []
        self.supports_cache, self.device = inner.supports_cache, inner.device

    def session(self, capacity, use_cache):
        return self.inner.session(capacity, use_cache)

    def select_rows(self, index):
        self.inner.select_rows(index)

    def forward(self, tokens, positions, mask, *, write_start_B, logit_index_BN):
        logits = self.inner.forward(tokens, positions, mask, write_start_B=write_start_B,
                                    logit_index_BN=logit_index_BN)
        index = logit_index_BN[0]
        self.records.append((positions[0, index].clone(), tokens[0, index].clone(),
                             logits[0].clone(), tokens.shape[1]))
        return logits


def _training_row(xt: torch.Tensor, x0: torch.Tensor, B: int) -> DiffusionBatch:
    """One block-mode training row ``x_t (+) x0`` of one document (the layout the sampler must
    reproduce)."""
    L = x0.shape[0]
    return DiffusionBatch(
        tokens_BS=torch.cat([xt, x0])[None], labels_BL=x0[None],
        loss_weights_BL=torch.ones(1, L), document_ids_BL=torch.zeros(1, L, dtype=torch.long),
        loss_mask_BL=torch.ones(1, L, dtype=torch.bool), t_BN=torch.ones(1, L // B),
        num_edits_B=torch.zeros(1, dtype=torch.long))


@pytest.fixture(scope="module")
def block_model():
    return tiny_model()


@pytest.mark.parametrize("clean_stream", ["block_causal", "causal"])
def test_cached_block_logits_equal_training_forward(block_model, clean_stream):
    B, prompt_len = 4, 8
    attn = AttentionConfig(mode="block", block_size=B, clean_stream=clean_stream)
    prompt = prompts([prompt_len], seed=3)[0]
    recorder = Recorder(ModelBackend(block_model))
    sampler = BlockSampler(recorder, rules(clean_stream=clean_stream),
                           SamplerConfig(max_new_tokens=12, block_size=B, strategy="fixed",
                                         steps_per_block=2))
    completion = sampler.generate([prompt])[0]
    # 3 blocks x 2 steps; the first step of a block also feeds the previous clean context
    assert [r[3] for r in recorder.records] == [12, 4, 8, 4, 8, 4]
    L = prompt_len + 12
    x0 = torch.tensor(prompt + completion.tokens + [0] * (L - prompt_len - len(completion.tokens)))
    for positions, block_tokens, logits_NV, _ in recorder.records:
        xt = torch.full((L,), MASK_ID)
        xt[positions] = block_tokens
        batch = _training_row(xt, x0, B)
        with torch.no_grad():
            expected = block_model(*model_inputs(batch, attn))[0, positions].float()
        assert logits_NV.shape[-1] == block_model.real_vocab_size  # vocabulary padding cut off
        expected = expected[:, :block_model.real_vocab_size]
        finite = torch.isfinite(expected)
        assert torch.equal(finite, torch.isfinite(logits_NV))  # [MASK] stays -inf
        assert (expected[finite] - logits_NV[finite]).abs().max() <= 1e-5


@pytest.mark.parametrize("block_size,strategy", [(4, "fixed"), (3, "threshold"), (1, "fixed"),
                                                 (6, "fixed")])
def test_kv_cache_gives_the_same_tokens(block_model, block_size, strategy):
    batch = prompts([7, 3, 12], seed=1)
    outs = []
    for kv_cache in (True, False):
        cfg = SamplerConfig(max_new_tokens=13, block_size=block_size, strategy=strategy,
                            steps_per_block=2, threshold=0.05, kv_cache=kv_cache)
        outs.append(BlockSampler(ModelBackend(block_model), rules(), cfg).generate(batch))
    assert [c.tokens for c in outs[0]] == [c.tokens for c in outs[1]]
    assert [c.num_forwards for c in outs[0]] == [c.num_forwards for c in outs[1]]


def test_rows_at_different_blocks_stay_exact(block_model):
    """With the threshold rule rows need different numbers of steps and advance on their own
    (ragged chunks and cache offsets); cached, uncached and one-row-at-a-time decoding agree."""
    batch = prompts([7, 3, 12, 5], seed=1)
    runs = []
    for kv_cache in (True, False):
        cfg = SamplerConfig(max_new_tokens=16, block_size=4, threshold=0.04, kv_cache=kv_cache)
        sampler = BlockSampler(ModelBackend(block_model), rules(), cfg)
        runs.append(sampler.generate(batch))
        if kv_cache:
            num_calls = sampler.num_model_calls
    forwards = [c.num_forwards for c in runs[0]]
    assert len(set(forwards)) >= 3  # rows really progressed at different rates
    assert num_calls == max(forwards)  # and nobody waited for the slowest row
    assert [c.tokens for c in runs[0]] == [c.tokens for c in runs[1]]
    assert forwards == [c.num_forwards for c in runs[1]]
    solo = [sampler.generate([p])[0] for p in batch]
    assert [c.tokens for c in solo] == [c.tokens for c in runs[0]]
    assert [c.num_forwards for c in solo] == forwards


def test_batched_rows_equal_solo_rows(block_model):
    """Left padding is invisible: a prompt decodes the same alone and in a batch."""
    batch = prompts([5, 11, 2, 8], seed=2)
    sampler = BlockSampler(ModelBackend(block_model), rules(),
                           SamplerConfig(max_new_tokens=10, block_size=4, strategy="fixed"))
    together = [c.tokens for c in sampler.generate(batch)]
    assert together == [sampler.generate([p])[0].tokens for p in batch]


@pytest.mark.parametrize("mode,logit_shift", [("causal", False), ("causal", True),
                                              ("bidirectional", False)])
def test_other_modes_cache_and_batch_consistent(mode, logit_shift):
    model = tiny_model()
    r = rules(mode=mode, logit_shift=logit_shift)
    batch = prompts([6, 3], seed=4)
    outs = []
    for kv_cache in (True, False):
        cfg = SamplerConfig(max_new_tokens=9, block_size=3, strategy="fixed", kv_cache=kv_cache,
                            bidirectional_context="full")
        sampler = BlockSampler(ModelBackend(model), r, cfg)
        outs.append([c.tokens for c in sampler.generate(batch)])
    assert outs[0] == outs[1]
    assert outs[0] == [[c.tokens for c in sampler.generate([p])][0] for p in batch]
    if mode == "bidirectional":
        assert not sampler.use_cache


def test_ar_baseline_is_one_token_per_forward(block_model):
    cfg = SamplerConfig(max_new_tokens=9, ar_baseline=True, block_size=8, strategy="threshold")
    sampler = BlockSampler(ModelBackend(block_model), rules(), cfg)
    assert (sampler.cfg.block_size, sampler.cfg.strategy, sampler.cfg.steps_per_block) == (1, "fixed", 1)
    out = sampler.generate(prompts([5], seed=5))[0]
    assert out.num_forwards == len(out.tokens)


def test_lean_linears_are_bit_identical(block_model):
    """The sampler's TP=1 linears (``single_rank_linear``) compute megatron's forward exactly,
    and leave the model as it was."""
    from megatron_diffusion.sampling.backend import lean_linears

    tokens = torch.tensor(prompts([10], seed=7))
    args = (tokens, torch.arange(10)[None], None)
    with torch.no_grad():
        plain = block_model(*args)
        with lean_linears(block_model, tp_size=1):
            assert any("forward" in vars(m) for m in block_model.modules())
            lean = block_model(*args)
    assert torch.equal(plain, lean)
    assert not any("forward" in vars(m) for m in block_model.modules())


class ChunkRecorder(Recorder):
    """Also keeps every forward's whole chunk (tokens, positions) of row 0."""

    def forward(self, tokens, positions, mask, *, write_start_B, logit_index_BN):
        logits = self.inner.forward(tokens, positions, mask, write_start_B=write_start_B,
                                    logit_index_BN=logit_index_BN)
        self.records.append((tokens[0].clone(), positions[0].clone(), logits[0].clone()))
        return logits


@pytest.mark.parametrize("clean_stream", ["block_causal", "causal"])
def test_block_logit_shift_equals_training_convention(block_model, clean_stream):
    """Block mode with ``model.logit_shift`` (Fast-dLLM v2's token shift): the sampler's logits
    for block position 0 are the training forward's clean-stream output at ``L + start - 1``,
    for position j > 0 its noisy output at ``start + j - 1`` (built by hand from one full
    ``x_t (+) x0`` forward per step), through a cached decode whose chunks are as short as the
    pending column allows."""
    from megatron_diffusion.loss.readout import shift_sources

    B, prompt_len, gen = 4, 8, 12
    attn = AttentionConfig(mode="block", block_size=B, clean_stream=clean_stream)
    prompt = prompts([prompt_len], seed=5)[0]
    recorder = ChunkRecorder(ModelBackend(block_model))
    sampler = BlockSampler(recorder, rules(clean_stream=clean_stream, logit_shift=True),
                           SamplerConfig(max_new_tokens=gen, block_size=B, strategy="fixed",
                                         steps_per_block=2))
    completion = sampler.generate([prompt])[0]
    assert len(completion.tokens) == gen
    # prefill + block; pending column + block; finished block + next block; ...
    assert [len(r[0]) for r in recorder.records] == [12, 5, 8, 5, 8, 5]
    L = prompt_len + gen
    x0 = torch.tensor(prompt + completion.tokens)
    blocks = torch.arange(L) // B  # aligned: the prompt is two whole blocks
    sources = shift_sources(1, L, blocks[None])[0]  # the trainer's definition
    for tokens, positions, logits_NV in recorder.records:
        start = int(positions[-B])  # the chunk ends with the block
        xt = torch.full((L,), MASK_ID)
        xt[start:start + B] = tokens[-B:]
        batch = _training_row(xt, x0, B)
        with torch.no_grad():
            out = block_model(*model_inputs(batch, attn))[0].float()
        by_hand = [L + start - 1] + list(range(start, start + B - 1))
        assert by_hand == sources[start - 1:start + B - 1].tolist()
        expected = out[by_hand, :block_model.real_vocab_size]
        finite = torch.isfinite(expected)
        assert torch.equal(finite, torch.isfinite(logits_NV))
        assert (expected[finite] - logits_NV[finite]).abs().max() <= 1e-5


def test_block_logit_shift_cache_and_batch_consistent(block_model):
    batch = prompts([7, 3, 12], seed=6)
    outs = []
    for kv_cache in (True, False):
        cfg = SamplerConfig(max_new_tokens=11, block_size=4, threshold=0.05, kv_cache=kv_cache)
        sampler = BlockSampler(ModelBackend(block_model), rules(logit_shift=True), cfg)
        outs.append([c.tokens for c in sampler.generate(batch)])
    assert outs[0] == outs[1]
    assert outs[0] == [sampler.generate([p])[0].tokens for p in batch]


@pytest.mark.parametrize("overrides", [{}, {"add_qkv_bias": True},
                                       {"qk_layernorm": True, "kv_channels": 32}])
def test_lean_forward_is_bit_identical(overrides):
    """The sampler's TP=1 forward (``lean_forward``) equals megatron's forward bit for bit,
    with a block mask, and is the one ``ModelBackend`` runs."""
    from megatron_diffusion.masks.dense import attention_allowed, to_megatron_mask
    from megatron_diffusion.sampling.backend import lean_linears
    from megatron_diffusion.sampling.lean_forward import lean_forward

    model = tiny_model(**overrides)
    assert ModelBackend(model).lean
    tokens = torch.tensor(prompts([6, 6], seed=8))
    attn = AttentionConfig(mode="block", block_size=3)
    mask = to_megatron_mask(attention_allowed(attn, torch.zeros(2, 6, dtype=torch.long)))
    x0 = torch.tensor(prompts([6, 6], seed=9))
    tokens = torch.cat([tokens, x0], dim=1)
    positions = torch.arange(6).repeat(2)[None].expand(2, -1)
    with torch.no_grad():
        plain = model(tokens, positions, mask)
        with lean_linears(model, tp_size=1):
            lean = lean_forward(model, tokens, positions, mask)
    assert torch.equal(plain, lean)


def test_column_major_session_follows_weight_updates():
    """CPU sessions read column-major copies of the weights; new weights (loaded in place)
    remake them, and the model's own storage is restored after the session."""
    from megatron_diffusion.sampling.backend import column_major_weights

    model = tiny_model()
    weight = model.decoder.layers[0].mlp.linear_fc1.weight
    before = weight.data.data_ptr()
    cfg = SamplerConfig(max_new_tokens=6, block_size=3, strategy="fixed")
    batch = prompts([5], seed=11)
    first = BlockSampler(ModelBackend(model), rules(), cfg).generate(batch)[0].tokens
    with column_major_weights(model, True):
        assert not weight.is_contiguous() and weight.t().is_contiguous()
    assert weight.data.data_ptr() == before and weight.is_contiguous()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.5)
    flipped = BlockSampler(ModelBackend(model), rules(), cfg).generate(batch)[0].tokens
    plain = BlockSampler(ModelBackend(model), rules(),
                         SamplerConfig(max_new_tokens=6, block_size=3, strategy="fixed",
                                       kv_cache=False))
    assert flipped == plain.generate(batch)[0].tokens and flipped != first
