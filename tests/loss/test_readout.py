"""The readout: which outputs the loss reads (hand-checked on 8 tokens, block 4), and the loss
with the LM head at those outputs only equals the loss with full logits, bit for bit."""

import dataclasses

import pytest
import torch

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.loss.readout import readout
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model import weights
from megatron_diffusion.model.gpt import transformer_config
from megatron_diffusion.model.inputs import forward_kwargs
from megatron_diffusion.parallel.process_groups import initialize_model_parallel
from megatron_diffusion.training.model_setup import build_training_model, unwrap
from megatron_diffusion.training.forward_backward import ForwardSpec, forward_backward
from tests.helpers import seeded_full_weights, synthetic_batch, tiny_model_config

L = 8


@pytest.fixture(scope="module", autouse=True)
def _groups():
    initialize_model_parallel(1, 1, seed=0)


def batch(weights, docs=None):
    """One row of 8 tokens; ``weights`` > 0 marks the masked (loss-carrying) positions."""
    docs_BL = torch.zeros(1, L, dtype=torch.long) if docs is None else torch.tensor([docs])
    return DiffusionBatch(tokens_BS=torch.zeros(1, 2 * L, dtype=torch.long),
                          labels_BL=torch.arange(L)[None], loss_weights_BL=torch.tensor([weights]),
                          document_ids_BL=docs_BL, loss_mask_BL=torch.ones(1, L, dtype=torch.bool),
                          t_BN=torch.zeros(1, 2), num_edits_B=torch.zeros(1, dtype=torch.long))


def outputs(ro, start=0, stop=None):
    return ro.needed(start, stop)[0].nonzero().squeeze(1).tolist()


# masked tokens 2, 4, 5, 7 of x0 = 0..7; blocks [0..3] [4..7]; outputs 0-7 noisy, 8-15 clean
MASKED = [0.0, 0, 2, 0, 2, 2, 0, 2]


def test_block_shift_reads_masked_noisy_outputs_and_block_starts_clean_source():
    ro = readout(batch(MASKED), 2 * L, LossConfig(), logit_shift=True, block_size=4)
    # token 2 <- noisy 1, 5 <- noisy 4, 7 <- noisy 6; token 4 starts block 1 <- clean 3 = 11
    assert outputs(ro) == [1, 4, 6, 11]
    assert ro.main.source_BT[0].tolist() == [0, 1, 2, 11, 4, 5, 6]  # slot k: token k + 1


def test_ar_term_adds_the_clean_stream():
    ro = readout(batch(MASKED), 2 * L, LossConfig(ar_loss_weight=0.5), logit_shift=True,
                 block_size=4)
    # clean outputs 8..14 predict tokens 1..7 (the last clean output predicts nothing)
    assert outputs(ro) == [1, 4, 6] + list(range(8, 15))


def test_block_without_shift_reads_the_masked_noisy_outputs():
    ro = readout(batch(MASKED), 2 * L, LossConfig(), block_size=4)
    assert outputs(ro) == [2, 4, 5, 7]  # output j predicts token j; the clean half: nothing


def test_isolated_documents_move_the_block_starts():
    # documents [0 0 0 | 1 1 1 1 1]: blocks [0..2] [3..6] [7]; masked tokens 3 and 7 start blocks
    ro = readout(batch([0.0, 0, 0, 2, 2, 0, 0, 2], docs=[0, 0, 0, 1, 1, 1, 1, 1]), 2 * L,
                 LossConfig(), logit_shift=True, block_size=4, visibility="isolated")
    assert outputs(ro) == [3, 10, 14]  # token 4 <- noisy 3; 3 <- clean 2; 7 <- clean 6


def test_a_context_parallel_slice_reads_its_own_outputs():
    ro = readout(batch(MASKED), 2 * L, LossConfig(), logit_shift=True, block_size=4)
    assert outputs(ro, 0, 8) == [1, 4, 6] and outputs(ro, 8, 16) == [3]  # 11 - 8


def test_ar_objective_reads_every_eligible_output_but_the_last():
    b = dataclasses.replace(batch(MASKED), tokens_BS=torch.zeros(1, L, dtype=torch.long))
    assert outputs(readout(b, L, LossConfig(objective="ar"))) == list(range(L - 1))


def _model():
    cfg = tiny_model_config()
    chunks = build_training_model(cfg, transformer_config(cfg))
    models = unwrap(chunks)
    shapes = {k: v.shape for k, v in weights.full_over_pipeline_stages(models).items()}
    weights.load_full(models, seeded_full_weights(shapes))
    return chunks, models


@pytest.mark.parametrize("rows", [[0, 2, 5, 9, 30], list(range(0, 64, 3)), [7], [3, 17]],
                         ids=["five", "twenty-two", "one", "two"])
def test_head_at_some_outputs_gives_the_full_logits_rows_bit_for_bit(rows):
    _, (model,) = _model()
    attn = AttentionConfig(mode="block", block_size=4)
    b = synthetic_batch(attn, rows=2, seq_len=16, seed=3)
    at_BS = torch.zeros(2, 32, dtype=torch.bool)
    at_BS.view(-1)[rows] = True
    full = model(**forward_kwargs(b, attn))
    some = model(**forward_kwargs(b, attn), logits_at_BS=at_BS)
    assert some.shape == (1, len(rows), full.shape[-1])
    assert torch.equal(some[0], full[at_BS])


@pytest.mark.parametrize("loss_kw, shift", [({}, True), ({"ar_loss_weight": 0.5}, True),
                                            ({"normalization": "sequence"}, False)],
                         ids=["shift", "shift_ar", "plain_sequence"])
def test_loss_and_gradients_equal_with_and_without_the_head_subset(loss_kw, shift):
    clean_stream = "causal" if loss_kw.get("ar_loss_weight") else "block_causal"
    attn = AttentionConfig(mode="block", block_size=4, clean_stream=clean_stream)
    batches = [synthetic_batch(attn, rows=2, seq_len=16, seed=s) for s in (1, 2)]
    results = []
    for head_subset in (False, True):
        chunks, models = _model()
        spec = ForwardSpec(attn, LossConfig(**loss_kw), logit_shift=shift, head_subset=head_subset)
        res = forward_backward(chunks, batches, spec)
        grads = weights.full_over_pipeline_stages(models, grads=True)
        results.append((res, grads))
    (ref, ref_grads), (got, got_grads) = results
    assert got == ref  # loss, ce, acc (and ar_ce): the same floats
    assert ref_grads.keys() == got_grads.keys()
    for name in ref_grads:
        assert torch.equal(ref_grads[name], got_grads[name]), name
