"""What two runs of the equivalence workers must agree on: the loss, the token count, the logits
(with the same -inf entries: [MASK] and vocabulary padding) and every gathered gradient."""

import torch


def assert_same_outputs(ref: dict, got: dict, tol: float = 1e-5) -> None:
    assert abs(got["loss"] - ref["loss"]) <= tol
    assert got["num_tokens"] == ref["num_tokens"]
    finite = torch.isfinite(ref["logits"])
    assert torch.equal(finite, torch.isfinite(got["logits"]))  # MASK/padding stay -inf
    assert (got["logits"][finite] - ref["logits"][finite]).abs().max() <= tol
    assert set(got["grads"]) == set(ref["grads"])
    for name, g in ref["grads"].items():
        assert (got["grads"][name] - g).abs().max() <= tol, name
