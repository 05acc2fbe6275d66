"""TP=2 / PP=2 / PP=2 x VPP=2 / DP=2 give the single-process loss, logits and gradients."""

import pytest
import torch

from tests.helpers import torchrun

pytestmark = pytest.mark.distributed
WORKER = "tests/distributed/equivalence_worker.py"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.pt"
    torchrun(WORKER, 1, "--out", str(out))
    return torch.load(out)


def _compare(ref, got, tol=1e-5):
    assert abs(got["loss"] - ref["loss"]) <= tol
    assert got["num_tokens"] == ref["num_tokens"]
    finite = torch.isfinite(ref["logits"])
    assert torch.equal(finite, torch.isfinite(got["logits"]))  # MASK/padding stay -inf
    assert (got["logits"][finite] - ref["logits"][finite]).abs().max() <= tol
    assert set(got["grads"]) == set(ref["grads"])
    for name, g in ref["grads"].items():
        assert (got["grads"][name] - g).abs().max() <= tol, name


@pytest.mark.parametrize("layout", [["--tp", "2"], ["--pp", "2"], ["--pp", "2", "--vpp", "2"], []],
                         ids=["tp2", "pp2", "pp2_vpp2", "dp2"])
def test_two_ranks_match_one_process(layout, reference, tmp_path):
    out = tmp_path / "out.pt"
    torchrun(WORKER, 2, *layout, "--out", str(out))
    _compare(reference, torch.load(out))


def test_isolated_packing_tp2(tmp_path):
    ref, out = tmp_path / "ref.pt", tmp_path / "out.pt"
    torchrun(WORKER, 1, "--visibility", "isolated", "--out", str(ref))
    torchrun(WORKER, 2, "--visibility", "isolated", "--tp", "2", "--out", str(out))
    _compare(torch.load(ref), torch.load(out))
