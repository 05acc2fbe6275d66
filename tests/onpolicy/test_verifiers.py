"""Verifiers (onpolicy/verifiers.py): the execution verifier in the evaluation sandbox on
passing, failing, timing-out and hostile completions; the model verifier by hand, against
``trajectory_elbo`` and on a tiny checkpoint."""

import math
import os

import pytest
import torch

from megatron_diffusion.loading.trained import load_model
from megatron_diffusion.distill.row_model import RowModel
from megatron_diffusion.errors import UsageError
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.onpolicy.prompts import PromptRecord
from megatron_diffusion.onpolicy.verifiers import ExecutionVerifier, ModelVerifier, left_to_right_logprobs
from megatron_diffusion.distill.orders import left_to_right, trajectory_elbo
from megatron_diffusion.training.checkpoint import latest_checkpoint
from tests.evaluation.sandbox_helpers import new_marker, processes_named, sandbox_config, set_name_lines
from tests.evaluation.test_sandbox_hostile import victim_dir  # noqa: F401 (a fixture)
from tests.helpers import make_checkpoint

ADD = PromptRecord(prompt="def add(a, b):\n", task_id="add",
                   test="def check(candidate):\n    assert candidate(2, 3) == 5\n", entry_point="add")


def test_execution_verifier_passing_failing_timing_out_crashing():
    # the loop ends at the CPU limit (a timeout); the wall clock leaves room for a loaded machine
    verifier = ExecutionVerifier(sandbox_config(timeout_s=10.0, cpu_s=1))
    completions = [
        "    return a + b\n",
        "    return a + b\n\n\nprint('after the function: cut, as HumanEval evaluation cuts it')\nraise SystemExit(1)\n",
        "    return a - b\n",
        "    while True:\n        pass\n",
        "    raise RuntimeError('crash')\n",
        "    return (a +\n",  # a syntax error
    ]
    checks = verifier.checks([ADD] * len(completions), completions)
    assert [c.status for c in checks] == ["passed", "passed", "failed", "timeout", "error", "error"], checks
    assert verifier.score_batch([ADD] * len(completions), completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert verifier.score(ADD, completions[0]) == 1.0


def test_execution_verifier_contains_hostile_completions(victim_dir):  # noqa: F811
    verifier = ExecutionVerifier(sandbox_config(timeout_s=10.0, cpu_s=2, max_processes=12, workers=1))
    marker = new_marker()
    victim = os.path.join(victim_dir, "file.txt")
    bomb = "".join("    " + line + "\n" for line in set_name_lines(marker).splitlines())
    completions = [
        bomb + "    import os\n    while True:\n        os.fork()\n",
        f"    import os\n    os.remove({victim!r})\n    return a + b\n",  # passes only if deleted
        f"    import shutil\n    shutil.rmtree({victim_dir!r})\n    return a + b\n",
    ]
    assert verifier.score_batch([ADD] * 3, completions) == [0.0, 0.0, 0.0]
    assert open(victim).read() == "precious"
    assert processes_named(marker) == []


def test_execution_verifier_needs_a_test():
    with pytest.raises(UsageError, match="no 'test'/'entry_point'"):
        ExecutionVerifier(sandbox_config()).score(PromptRecord("x = ", "free/0"), "1\n")
    with pytest.raises(UsageError, match="completions"):
        ExecutionVerifier(sandbox_config()).score_batch([ADD], [])


def test_left_to_right_logprobs_by_hand():
    """A stub whose log p at position i encodes which positions of the block are revealed."""
    def logp_fn(revealed_RNB):
        code_RN1 = (revealed_RNB * 2 ** torch.arange(3)).sum(-1, keepdim=True)
        value_RNB = (1 + code_RN1 + torch.arange(3)).double() / 100
        return value_RNB.log().unsqueeze(-1).expand(*revealed_RNB.shape, 5)

    x0 = torch.tensor([[4, 0, 2], [1, 1, 3]])
    # position i is read with positions 0..i-1 revealed: code 2^i - 1, value (2^i + i) / 100
    expected = torch.tensor([[1.0, 3.0, 6.0]] * 2, dtype=torch.double).div(100).log()
    for per_call in (None, 1, 2):
        assert torch.allclose(left_to_right_logprobs(logp_fn, x0, per_call).double(), expected)


@pytest.fixture(scope="module", params=[False, True], ids=["no_shift", "logit_shift"])
def reference(request, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref")
    make_checkpoint(run, attention=AttentionConfig(mode="block", block_size=4, clean_stream="causal"),
                    num_layers=2, logit_shift=request.param)
    return ModelVerifier.from_checkpoint(latest_checkpoint(run), states_per_call=2)


def _ids(seed, n):
    return torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_block_aligned_completion_is_the_left_to_right_elbo(reference):
    prompt, completion = _ids(0, 4), _ids(1, 8)
    lp = reference.completion_logprobs(prompt, completion)
    logp_fn, x0_NB = reference.reference.logp_fn(torch.tensor(prompt + completion), torch.zeros(12, dtype=torch.long), 1)
    elbo = trajectory_elbo(left_to_right(4).expand(2, 4), x0_NB, logp_fn)
    assert lp.shape == (8,) and torch.allclose(lp.view(2, 4).sum(1), elbo, atol=1e-5)


def test_unaligned_completion_token_by_token(reference):
    """Prompt of 6 (ends inside block 1), completion of 5: each token from its own state."""
    prompt, completion = _ids(2, 6), _ids(3, 5)
    lp = reference.completion_logprobs(prompt, completion)
    row = torch.tensor(prompt + completion + [0])  # padded to 12; the pad is masked wherever read
    logp_fn, x0_NB = reference.reference.logp_fn(row, torch.zeros(12, dtype=torch.long), 1)
    for j in range(5):
        pos = 6 + j - 4  # position within the searched blocks (block 1 onwards)
        revealed = torch.zeros(1, 2, 4, dtype=torch.bool)
        revealed.view(1, -1)[0, pos - pos % 4:pos] = True
        want = logp_fn(revealed)[0].reshape(8, -1)[pos, completion[j]]
        assert lp[j].item() == pytest.approx(want.item(), abs=1e-5)


def _greedy(verifier: ModelVerifier, prompt: list[int], n: int) -> list[int]:
    """The reference's own left-to-right greedy decode, one token per step."""
    out, mask = [], verifier.reference.loaded.config.model.mask_token_id
    for _ in range(n):
        P = len(prompt) + len(out)
        L = -(-(P + 1) // 4) * 4
        row = torch.tensor(prompt + out + [mask] * (L - P))
        logp_fn, _ = verifier.reference.logp_fn(row, torch.zeros(L, dtype=torch.long), len(prompt) // 4)
        first = len(prompt) // 4 * 4
        revealed = (torch.arange(first, L) < P).view(1, -1, 4) & (torch.arange(first, L) >= P - P % 4).view(1, -1, 4)
        out.append(int(logp_fn(revealed)[0].reshape(L - first, -1)[P - first].argmax()))
    return out


def test_likely_completions_score_higher(reference):
    prompt = _ids(4, 5)
    greedy = _greedy(reference, prompt, 6)
    noise = _ids(5, 6)
    best = reference.score_ids(prompt, greedy)
    assert 0 < best <= 1 and best > reference.score_ids(prompt, noise)
    assert best > reference.score_ids(prompt, greedy[::-1]) or greedy == greedy[::-1]


def test_text_score_is_exp_mean_logprob(reference):
    record = PromptRecord("def add(a, b):\n", "add")
    tok = reference.tokenizer
    lp = reference.completion_logprobs(tok.encode(record.prompt), tok.encode("    return a + b\n"))
    assert reference.score(record, "    return a + b\n") == pytest.approx(math.exp(lp.mean().item()))
    assert reference.score_batch([record], [""]) == [0.0]


def test_model_verifier_refuses(reference, tmp_path):
    with pytest.raises(UsageError, match="prompt: got no tokens"):
        reference.completion_logprobs([], [1, 2])
    with pytest.raises(UsageError, match="max_position_embeddings"):
        reference.completion_logprobs([1] * 200, [2] * 100)
    run = tmp_path / "bidir"
    make_checkpoint(run, attention=AttentionConfig(mode="bidirectional"), num_layers=1)
    bidir = ModelVerifier(RowModel(load_model(latest_checkpoint(run))), reference.tokenizer)
    with pytest.raises(UsageError, match="block-diffusion model"):
        bidir.completion_logprobs([1, 2, 3], [4])


def test_surrogate_of_a_real_sampler_trajectory(reference):
    """The sampler's step map and forward count are what ``dense_surrogate`` reads: 2 blocks of
    4 tokens at 2 steps per block (the fixed rule) commit 2 tokens per step."""
    from megatron_diffusion.onpolicy.objective import dense_surrogate
    from megatron_diffusion.sampling.api import DiffusionSampler
    from megatron_diffusion.sampling.config import SamplerConfig

    cfg = SamplerConfig(max_new_tokens=8, block_size=4, strategy="fixed", steps_per_block=2,
                        ignore_eos=True).validate()
    sampler = DiffusionSampler(reference.reference.loaded, reference.tokenizer, cfg)
    [result] = sampler.complete(["def add(a, b):\n"])
    assert result.num_tokens == 8 and sorted(result.step_map) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert dense_surrogate(result.step_map, result.num_forwards) == (-2.0, 4)
