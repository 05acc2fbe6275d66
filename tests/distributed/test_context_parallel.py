"""Context parallelism (DeepSpeed-Ulysses) gives the single-process loss, logits and gradients.

Block-diffusion rows (``x_t (+) x0``, 32 model tokens) with packed shared and isolated
visibility, the block-mode logit shift with the AR term on a causal clean stream, and the Flex
``BlockMask`` (forward only on CPU: FlexAttention has no CPU backward), at CP=2 and at CP=2 x TP=2
(keys/values then expanded: one KV head per TP rank), x DP=2 and x PP=2, and CP=4 (2 KV heads
over 4 ranks: expanded too) on four processes.
"""

import pytest
import torch

from tests.distributed.compare import assert_same_outputs
from tests.helpers import torchrun

pytestmark = pytest.mark.distributed
WORKER = "tests/distributed/context_parallel_worker.py"
ALL_CASES = "shared,isolated,shift_ar,flex"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp_ref") / "ref.pt"
    torchrun(WORKER, 1, "--cases", ALL_CASES, "--out", str(out))
    return torch.load(out)


def _compare(ref, got, tol=1e-5):
    assert got["core_attention"] == ["UlyssesCoreAttention"]
    assert ref["num_tokens"] > 0
    assert abs(got["acc"] - ref["acc"]) <= tol
    assert_same_outputs(ref, got, tol)


def test_cp2_matches_one_process(reference, tmp_path):
    out = tmp_path / "cp2.pt"
    torchrun(WORKER, 2, "--cp", "2", "--cases", ALL_CASES, "--out", str(out))
    got = torch.load(out)
    for case in ALL_CASES.split(","):
        _compare(reference[case], got[case])
    assert reference["shared"]["grads"] and reference["shared"]["logits"].shape[1] == 32


@pytest.mark.parametrize("layout", [["--cp", "2", "--tp", "2"], ["--cp", "2"],
                                    ["--cp", "2", "--pp", "2"], ["--cp", "4"]],
                         ids=["cp2_tp2", "cp2_dp2", "cp2_pp2", "cp4"])
def test_four_processes_match_one_process(layout, reference, tmp_path):
    out = tmp_path / "four.pt"
    torchrun(WORKER, 4, *layout, "--cases", "shift_ar", "--out", str(out))
    _compare(reference["shift_ar"], torch.load(out)["shift_ar"])
