"""Loss: which output predicts which token under the logit shift, hand-checked on 8 tokens.

Outputs are made "self-describing": output index ``s`` puts all its mass on token id ``s``
(``V = 2L`` ids), so the token an output predicts *is* its index, and a target ``j`` with
``labels[j] = k`` is predicted correctly (zero loss, counted correct) iff output ``k`` predicts
it.
"""

import pytest
import torch

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.config import RunConfig
from megatron_diffusion.errors import UsageError
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.loss.elbo import diffusion_loss
from megatron_diffusion.loss.readout import shift_sources
from megatron_diffusion.parallel.process_groups import initialize_model_parallel

L = 8


@pytest.fixture(scope="module", autouse=True)
def _groups():
    initialize_model_parallel(1, 1, seed=0)


def self_describing_logits(S, V=2 * L, scale=50.0):
    logits_SV = torch.full((S, V), -scale)
    logits_SV[torch.arange(S), torch.arange(S)] = scale
    return logits_SV.unsqueeze(0)


def batch(labels, weights=None, docs=None, eligible=None):
    labels_BL = torch.tensor([labels])
    weights_BL = torch.ones(1, L) if weights is None else torch.tensor([weights], dtype=torch.float)
    docs_BL = torch.zeros(1, L, dtype=torch.long) if docs is None else torch.tensor([docs])
    mask_BL = torch.ones(1, L, dtype=torch.bool) if eligible is None else torch.tensor([eligible])
    return DiffusionBatch(tokens_BS=torch.zeros(1, 2 * L, dtype=torch.long), labels_BL=labels_BL,
                          loss_weights_BL=weights_BL, document_ids_BL=docs_BL,
                          loss_mask_BL=mask_BL, t_BN=torch.zeros(1, 2),
                          num_edits_B=torch.zeros(1, dtype=torch.long))


def test_block_shift_sources_by_hand():
    # B=4, shared: blocks [0 0 0 0 | 1 1 1 1]; targets j = 1..7
    blocks = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    # j=1,2,3 from noisy 0,1,2; j=4 (block 1's first) from the clean stream at 3 (= 8 + 3);
    # j=5,6,7 from noisy 4,5,6. Token 0 has no source.
    assert shift_sources(1, L, blocks).tolist() == [[0, 1, 2, 11, 4, 5, 6]]
    # isolated visibility, documents [0 0 0 | 1 1 1 1 1]: blocks restart at the document
    blocks = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2]])
    assert shift_sources(1, L, blocks).tolist() == [[0, 1, 10, 3, 4, 5, 14]]
    assert shift_sources(2, L).tolist() == [list(range(7))] * 2  # causal form


def test_block_shift_reads_the_clean_stream_for_a_blocks_first_token():
    logits = self_describing_logits(2 * L)
    right = batch([15, 0, 1, 2, 11, 4, 5, 6])  # token 0 has no loss: any label
    loss_sum, n, m = diffusion_loss(logits, right, LossConfig(), logit_shift=True, block_size=4)
    assert m["correct"].item() == 7 and m["ce_count"].item() == 7
    assert loss_sum.item() < 1e-6 and n.item() == L  # denominator: all eligible tokens
    # the old reading (block 1's first token from the previous *noisy* block, output 3) is wrong
    old = batch([0, 0, 1, 2, 3, 4, 5, 6])
    _, _, m = diffusion_loss(logits, old, LossConfig(), logit_shift=True, block_size=4)
    assert m["correct"].item() == 6


def test_block_shift_weights_move_with_their_targets():
    logits = self_describing_logits(2 * L)
    labels = [0, 0, 1, 2, 3, 4, 5, 6]  # position 4 wrong under the block shift (its source is 11)
    weights = [5.0, 0, 0, 0, 2.0, 0, 0, 0]  # weight of token 0 is dropped, token 4 keeps its 2.0
    loss_sum, _, m = diffusion_loss(logits, batch(labels, weights), LossConfig(),
                                    logit_shift=True, block_size=4)
    # CE of target 3 read from output 11: log-sum-exp - logit = 100 + log(1 + 15 e^-100) ~ 100
    assert loss_sum.item() == pytest.approx(2.0 * 100.0, rel=1e-5)
    assert m["ce_count"].item() == 1 and m["correct"].item() == 0


def test_edit_stage_all_position_loss_under_block_shift():
    logits = self_describing_logits(2 * L)
    labels = [0, 0, 1, 2, 11, 4, 5, 6]
    weights = [1.0] * L  # edit stage: every eligible position carries loss
    weights[6] = 3.0
    labels[6] = 9  # one wrong prediction (from output 5), weight 3
    loss_sum, n, m = diffusion_loss(logits, batch(labels, weights), LossConfig(),
                                    logit_shift=True, block_size=4)
    assert m["ce_count"].item() == 7 and m["correct"].item() == 6
    assert loss_sum.item() == pytest.approx(3.0 * 100.0, rel=1e-5) and n.item() == L


def test_block_shift_isolated_documents():
    logits = self_describing_logits(2 * L)
    labels = [0, 0, 1, 10, 3, 4, 5, 14]
    _, _, m = diffusion_loss(logits, batch(labels, docs=[0, 0, 0, 1, 1, 1, 1, 1]), LossConfig(),
                             logit_shift=True, block_size=4, visibility="isolated")
    assert m["correct"].item() == 7


def test_no_shift_and_causal_shift_unchanged():
    logits = self_describing_logits(2 * L)
    _, _, m = diffusion_loss(logits, batch(list(range(L))), LossConfig(), block_size=4)
    assert m["correct"].item() == L  # output i predicts token i
    causal = self_describing_logits(L)
    _, _, m = diffusion_loss(causal, batch([0, 0, 1, 2, 3, 4, 5, 6]), LossConfig(),
                             logit_shift=True)
    assert m["correct"].item() == 7  # output i-1 predicts token i, also across "blocks"


def test_sequence_normalisation_under_shift():
    logits = self_describing_logits(2 * L)
    labels = [0, 0, 1, 2, 3, 4, 5, 6]  # only position 4 wrong
    loss_sum, n, _ = diffusion_loss(logits, batch(labels, eligible=[True] * 4 + [False] * 4),
                                    LossConfig(normalization="sequence"), logit_shift=True,
                                    block_size=4)
    assert n.item() == 1 and loss_sum.item() == pytest.approx(100.0 / 4, rel=1e-5)


def test_block_shift_without_a_block_size_is_refused_by_the_run_config():
    # once, at config time (naming the field), not when the loss reads the output
    cfg = RunConfig()
    cfg.model.vocab_size, cfg.model.mask_token_id = 300, 299
    cfg.model.logit_shift, cfg.attention.block_size = True, None
    with pytest.raises(UsageError, match=r"^attention\.block_size"):
        cfg.validate()


def test_ar_term_reports_the_clean_streams_next_token_ce():
    # self-describing logits: clean output at 8 + i predicts id 8 + i; labels make the clean
    # stream's next-token prediction right at every second position (ce 0) and wrong elsewhere
    logits = self_describing_logits(2 * L)
    labels = [0] + [8 + i if i % 2 == 0 else 0 for i in range(L - 1)]
    eligible = [True] * (L - 1) + [False]  # the last target has no loss
    targets = torch.tensor(labels[1:])
    ce = torch.nn.functional.cross_entropy(logits[0, L:2 * L - 1], targets, reduction="none")
    ce = ce * torch.tensor(eligible[1:], dtype=torch.float)
    cfg = LossConfig(ar_loss_weight=0.5)
    _, _, m = diffusion_loss(logits.clone(), batch(labels, eligible=eligible), cfg,
                             logit_shift=True, block_size=4)
    assert m["ar_ce_count"].item() == 6
    torch.testing.assert_close(m["ar_ce_sum"], ce.sum())
    assert m["ar_ce_sum"].item() > 0
