"""Log-likelihoods for lm-eval: exact with an AR readout, the ELBO bound for diffusion checkpoints."""

import itertools
import math

import pytest
import torch

from megatron_diffusion.evaluation import likelihood
from megatron_diffusion.masks.config import AttentionConfig
from tests.helpers import make_checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from megatron_diffusion.loading.trained import load_model

    root = tmp_path_factory.mktemp("likelihood")
    causal = make_checkpoint(root / "causal", attention=AttentionConfig(mode="causal"), logit_shift=True)
    block = make_checkpoint(root / "block")
    bidirectional = make_checkpoint(root / "bidirectional", attention=AttentionConfig(mode="bidirectional"))
    return {"causal": load_model(causal), "block": load_model(block),
            "bidirectional": load_model(bidirectional)}


def _causal_logp(model, row: list[int]) -> torch.Tensor:
    """log-softmax of one plain causal forward of ``row`` (megatron mask: True = masked)."""
    L = len(row)
    mask = ~torch.tril(torch.ones(L, L, dtype=torch.bool))
    with torch.no_grad():
        logits = model(torch.tensor([row]), torch.arange(L)[None], mask[None, None])
    return torch.log_softmax(logits.float(), -1)[0]


def test_ar_loglikelihood_is_one_causal_forward_per_row(models):
    loaded = models["causal"]
    requests = [([5, 6, 7, 8, 9], [20, 21]), ([11, 12], [30, 31, 32, 33]), ([40], [41])]
    got = likelihood.ar_loglikelihood(loaded, requests, batch_size=2)  # right-padded together
    for (logp, greedy), (context, continuation) in zip(got, requests):
        logp_LV = _causal_logp(loaded.model, context + continuation)
        read = logp_LV[len(context) - 1:len(context) - 1 + len(continuation)]
        hand = sum(float(read[j, t]) for j, t in enumerate(continuation))
        assert logp == pytest.approx(hand, rel=1e-5)
        assert greedy == all(int(read[j].argmax()) == t for j, t in enumerate(continuation))


def test_ar_is_greedy_exactly_for_the_argmax_chain(models):
    loaded = models["causal"]
    context, chain = [5, 6, 7], []
    for _ in range(3):  # the greedy continuation, one token at a time
        chain.append(int(_causal_logp(loaded.model, context + chain)[-1].argmax()))
    other = chain[:-1] + [(chain[-1] + 1) % 200]
    (_, greedy), (_, not_greedy) = likelihood.ar_loglikelihood(loaded, [(context, chain), (context, other)])
    assert greedy and not not_greedy


def test_a_long_context_is_cut_from_the_left(models):
    loaded = models["causal"]
    limit = likelihood.max_length(loaded)
    context, continuation = [7 + i % 50 for i in range(limit + 20)], [3, 4]
    (long,), (cut,) = (likelihood.ar_loglikelihood(loaded, [(c, continuation)])
                       for c in (context, context[-(limit - 2):]))
    assert long == cut
    with pytest.raises(ValueError, match="continuation of 256 tokens: expected 1 to 255"):
        likelihood.fit_row([1], [2] * limit, limit)


def test_elbo_masks_only_the_continuation_with_weight_n_over_k():
    g = torch.Generator().manual_seed(0)
    masked_DL, weight_D = likelihood.elbo_masks(3, 4, 4000, g)
    assert not masked_DL[:, :3].any()
    k_D = masked_DL[:, 3:].sum(-1)
    assert k_D.min() == 1 and k_D.max() == 4
    assert torch.equal(weight_D, 4 / k_D.double())
    shares = torch.bincount(k_D, minlength=5)[1:] / 4000.0  # k ~ U{1..4}
    assert torch.allclose(shares, torch.full((4,), 0.25), atol=0.03)


def test_uniform_k_with_weight_n_over_k_equals_the_linear_schedule_bound():
    """The identity behind LLaDA's form (docs/evaluation.md, lm-evaluation-harness):
    E_t[(1/t) f(S_t)] (each position masked with probability t) =
    E_{k~U{1..n}}[(n/k) mean over |S|=k of f(S)], for any f of the masked set."""
    n = 4
    subsets = [s for k in range(1, n + 1) for s in itertools.combinations(range(n), k)]
    g = torch.Generator().manual_seed(1)
    f = {s: float(torch.randn((), generator=g)) for s in subsets}
    # int_0^1 t^(k-1) (1-t)^(n-k) dt = (k-1)! (n-k)! / n!
    linear = sum(math.factorial(len(s) - 1) * math.factorial(n - len(s)) / math.factorial(n) * f[s]
                 for s in subsets)
    uniform_k = sum((1 / n) * (n / k) * sum(f[s] for s in subsets if len(s) == k) / math.comb(n, k)
                    for k in range(1, n + 1))
    assert uniform_k == pytest.approx(linear, rel=1e-12)


def _masked_logp(loaded, row: list[int], masked: list[int]) -> list[float]:
    """log p of the masked tokens of ``row`` in one forward of ``x_t`` (``x_t (+) x0`` in block
    mode)."""
    from megatron_diffusion.model.inputs import attention_mask
    from megatron_diffusion.masks.dense import position_ids_for_mode

    cfg = loaded.config
    x0 = torch.tensor([row])
    xt = x0.clone()
    xt[0, masked] = cfg.model.mask_token_id
    doc = torch.zeros_like(x0)
    with torch.no_grad():
        tokens = torch.cat([xt, x0], 1) if cfg.attention.mode == "block" else xt
        logits = loaded.model(tokens, position_ids_for_mode(doc, cfg.attention),
                              attention_mask(cfg.attention, doc))
    logp = torch.log_softmax(logits.float(), -1)[0]
    return [float(logp[i, row[i]]) for i in masked]


@pytest.mark.parametrize("mode", ["block", "bidirectional"])
def test_elbo_of_one_token_is_its_masked_probability_whatever_the_draws(models, mode):
    loaded = models[mode]
    context, continuation = [5, 6, 7, 8, 9, 10], [21]
    (hand,) = _masked_logp(loaded, context + continuation, [6])
    for draws, seed in ((1, 0), (5, 3)):
        got = likelihood.elbo_loglikelihood(loaded, context, continuation, num_draws=draws, seed=seed)
        assert got == pytest.approx(hand, rel=1e-5)


@pytest.mark.parametrize("mode", ["block", "bidirectional"])
def test_elbo_is_the_mean_of_its_weighted_draws(models, mode):
    """Each draw: n/k times the masked tokens' log p in one forward of that masking."""
    loaded = models[mode]
    context, continuation = [5, 6, 7, 8, 9], [21, 22, 23]
    row = context + continuation
    masked_DL, weight_D = likelihood.elbo_masks(len(context), len(continuation), 6,
                                                torch.Generator().manual_seed(7))
    hand = [float(w) * sum(_masked_logp(loaded, row, torch.nonzero(m).flatten().tolist()))
            for m, w in zip(masked_DL, weight_D)]
    got = likelihood.elbo_loglikelihood(loaded, context, continuation, num_draws=6, seed=7, batch_size=4)
    assert got == pytest.approx(sum(hand) / 6, rel=1e-5)
    assert got < 0


def test_each_readout_refuses_the_other_kind_of_checkpoint(models):
    with pytest.raises(ValueError, match="without an AR readout"):
        likelihood.ar_loglikelihood(models["block"], [([1], [2])])
    with pytest.raises(ValueError, match="causal checkpoint reads shifted"):
        likelihood.elbo_loglikelihood(models["causal"], [1], [2], num_draws=1)
