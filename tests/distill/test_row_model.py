"""A block-diffusion checkpoint as the logp function of the order search (distill/row_model.py)."""

import pytest
import torch

from megatron_diffusion.loading.trained import load_model
from megatron_diffusion.distill.row_model import RowModel
from megatron_diffusion.errors import UsageError
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model.inputs import model_inputs
from megatron_diffusion.training.checkpoint import latest_checkpoint
from tests.helpers import make_checkpoint

B, L = 4, 16


@pytest.fixture(scope="module", params=[False, True], ids=["no_shift", "logit_shift"])
def row_model(request, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    make_checkpoint(run, attention=AttentionConfig(mode="block", block_size=B, clean_stream="causal"),
                    num_layers=2, logit_shift=request.param)
    return RowModel(load_model(latest_checkpoint(run)))


def _row(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 250, (L,), generator=g), torch.zeros(L, dtype=torch.long)


def test_each_block_sees_only_its_own_state(row_model):
    x0, docs = _row()
    logp_fn, x0_NB = row_model.logp_fn(x0, docs, context_blocks=1)
    assert x0_NB.tolist() == x0[B:].view(-1, B).tolist()
    g = torch.Generator().manual_seed(1)
    a = torch.rand(1, 3, B, generator=g) < 0.5
    b = a.clone()
    b[0, 0] = ~b[0, 0]  # another state in block 0 only
    la, lb = logp_fn(torch.cat([a, b]))
    assert not torch.allclose(la[0], lb[0])  # block 0 sees its state ...
    assert torch.allclose(la[1:], lb[1:], atol=1e-5)  # ... the later blocks do not see it


def test_logp_is_the_training_forward_at_the_training_read_position(row_model):
    """A state's log-probabilities are the ones the training loss reads for the same x_t."""
    x0, docs = _row(2)
    logp_fn, _ = row_model.logp_fn(x0, docs, context_blocks=1)
    revealed = torch.tensor([[[True, False, True, False], [False] * 4, [True] * 3 + [False]]])
    xt = x0.clone()
    xt[B:][~revealed.view(-1)] = row_model.loaded.config.model.mask_token_id
    from tests.sampling.test_exactness import _training_row

    model = row_model.loaded.model
    with torch.no_grad():
        logits = model(*model_inputs(_training_row(xt, x0, B), row_model.loaded.config.attention))[0]
    logits = logits[:, :model.real_vocab_size].float().log_softmax(-1)
    shift = row_model.loaded.config.model.logit_shift
    for j in range(B, L):  # shift: a block's first token from the clean stream, else j - 1
        src = (L + j - 1 if j % B == 0 else j - 1) if shift else j
        assert torch.allclose(logp_fn(revealed)[0].reshape(-1, logits.shape[-1])[j - B],
                              logits[src], atol=1e-5)


def test_models_and_rows_it_cannot_search(row_model, tmp_path):
    with pytest.raises(UsageError, match="leave no block"):
        row_model.check(seq_len=L, context_blocks=L // B)
    run = tmp_path / "bidir"
    make_checkpoint(run, attention=AttentionConfig(mode="bidirectional"), num_layers=1)
    with pytest.raises(UsageError, match="block-diffusion model"):
        RowModel(load_model(latest_checkpoint(run))).check(seq_len=L, context_blocks=1)


def test_the_fixture_has_both_kinds(row_model, request):
    assert row_model.loaded.config.model.logit_shift == ("logit_shift" in request.node.callspec.id)
