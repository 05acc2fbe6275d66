"""The loss on context-parallel slices: summed over the slices it is the unsplit loss (CP=1).

One process, no exchange: the full output is cut into the slices CP ranks would hold
(``local_span``), each slice's ``(loss_sum, num_tokens, metrics)`` is computed as that rank
would, and the sums (and the gradient with respect to the output) must equal the unsplit loss's,
for every way ``loss/readout.py`` pairs outputs with targets: block mode with shared and isolated
packing, the block-mode logit shift (block starts read from the clean stream, often in another
slice), the AR term on the clean stream, per-row normalisation, AR objective, bidirectional shift.
"""

import pytest
import torch

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.loss.elbo import diffusion_loss
from megatron_diffusion.parallel.context_parallel import local_span
from megatron_diffusion.parallel.process_groups import initialize_model_parallel

L, V, MASK = 16, 12, 11


@pytest.fixture(scope="module", autouse=True)
def _groups():
    initialize_model_parallel(1, 1, seed=0)


def _batch(S, docs, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (2, L), generator=g)
    weights = (torch.rand(2, L, generator=g) < 0.6).float() * 2.5
    eligible = torch.ones(2, L, dtype=torch.bool)
    eligible[1, :3] = False  # a prompt: no loss, not counted
    weights[~eligible] = 0
    doc = torch.repeat_interleave(torch.arange(len(docs)), torch.tensor(docs)).expand(2, -1)
    return DiffusionBatch(tokens_BS=torch.zeros(2, S, dtype=torch.long), labels_BL=labels,
                          loss_weights_BL=weights, document_ids_BL=doc.clone(),
                          loss_mask_BL=eligible, t_BN=torch.zeros(2, 4),
                          num_edits_B=torch.zeros(2, dtype=torch.long))


def _logits(S, seed):
    logits = torch.randn(2, S, V, generator=torch.Generator().manual_seed(seed)) * 2
    logits[..., MASK] = float("-inf")  # the [MASK] logit, as the model's hook sets it
    return logits.requires_grad_(True)


CASES = {  # name: (S/L, docs, visibility, LossConfig kwargs, logit_shift)
    "block_shared": (2, [16], "shared", {}, False),
    "block_isolated": (2, [5, 7, 4], "isolated", {}, False),
    "block_shift_shared": (2, [16], "shared", {}, True),
    "block_shift_isolated": (2, [5, 7, 4], "isolated", {}, True),
    "block_shift_ar": (2, [5, 7, 4], "isolated", {"ar_loss_weight": 0.5}, True),
    "block_ar": (2, [16], "shared", {"ar_loss_weight": 0.3}, False),
    "block_shift_sequence": (2, [5, 7, 4], "isolated", {"normalization": "sequence"}, True),
    "causal_ar_objective": (1, [16], "shared", {"objective": "ar"}, False),
    "bidirectional_shift": (1, [5, 11], "shared", {}, True),
}


@pytest.mark.parametrize("cp", [2, 4])
@pytest.mark.parametrize("case", list(CASES))
def test_slices_sum_to_the_unsplit_loss(case, cp):
    ratio, docs, visibility, loss_kw, shift = CASES[case]
    S = ratio * L
    batch, cfg = _batch(S, docs, seed=len(case)), LossConfig(**loss_kw)
    kw = dict(logit_shift=shift, block_size=4, visibility=visibility)
    full = _logits(S, seed=cp)
    ref_sum, ref_n, ref_m = diffusion_loss(full, batch, cfg, **kw)
    (ref_grad,) = torch.autograd.grad(ref_sum, full)

    parts, got_n, got_m = [], 0, {}
    for r in range(cp):
        start, stop = local_span(S, r, cp)
        local = full.detach()[:, start:stop].clone().requires_grad_(True)
        loss_sum, n, m = diffusion_loss(local, batch, cfg, cp_rank=r, cp_size=cp, **kw)
        (grad,) = torch.autograd.grad(loss_sum, local)
        parts.append((loss_sum.detach(), grad))
        got_n += int(n)
        for k, v in m.items():
            got_m[k] = got_m.get(k, 0) + v
    assert abs(sum(p[0] for p in parts) - ref_sum.detach()) <= 1e-5 * max(1.0, abs(ref_sum.item()))
    assert got_n == int(ref_n)
    assert set(got_m) == set(ref_m)
    for k in ref_m:
        assert abs(float(got_m[k]) - float(ref_m[k])) <= 1e-4, k
    assert ref_m["ce_count"] > 0
    torch.testing.assert_close(torch.cat([p[1] for p in parts], dim=1), ref_grad, atol=1e-6, rtol=0)
