"""TP=2 / PP=2 / PP=2 x VPP=2 / DP=2 give the single-process loss, logits and gradients."""

import pytest
import torch

from tests.distributed.compare import assert_same_outputs
from tests.helpers import torchrun

pytestmark = pytest.mark.distributed
WORKER = "tests/distributed/equivalence_worker.py"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.pt"
    torchrun(WORKER, 1, "--out", str(out))
    return torch.load(out)


@pytest.mark.parametrize("layout", [["--tp", "2"], ["--pp", "2"], ["--pp", "2", "--vpp", "2"], []],
                         ids=["tp2", "pp2", "pp2_vpp2", "dp2"])
def test_two_ranks_match_one_process(layout, reference, tmp_path):
    out = tmp_path / "out.pt"
    torchrun(WORKER, 2, *layout, "--out", str(out))
    assert_same_outputs(reference, torch.load(out))


def test_isolated_packing_tp2(tmp_path):
    ref, out = tmp_path / "ref.pt", tmp_path / "out.pt"
    torchrun(WORKER, 1, "--visibility", "isolated", "--out", str(ref))
    torchrun(WORKER, 2, "--visibility", "isolated", "--tp", "2", "--out", str(out))
    assert_same_outputs(torch.load(ref), torch.load(out))


@pytest.fixture(scope="module")
def qwen3_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "qwen3.pt"
    torchrun(WORKER, 1, "--qwen3", "--out", str(out))
    return torch.load(out)


@pytest.mark.parametrize("layout", [["--tp", "2"], ["--pp", "2"]], ids=["tp2", "pp2"])
def test_qwen3_qk_norms_match_one_process(layout, qwen3_reference, tmp_path):
    """The q/k norm weights are replicated over TP ranks that each see half the heads: their
    gradients are summed over TP (megatron's ``finalize_model_grads``, ``qk_layernorm``)."""
    out = tmp_path / "out.pt"
    torchrun(WORKER, 2, "--qwen3", *layout, "--out", str(out))
    assert any("q_layernorm" in name for name in qwen3_reference["grads"])
    assert_same_outputs(qwen3_reference, torch.load(out))
