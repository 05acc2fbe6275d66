"""GPU tier (marker ``gpu``; skipped without CUDA): Flex training equals SDPA in bf16, and a
Transformer Engine FP8 run tracks its BF16 twin over 50 steps."""

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _train(tmp_path, tiny_store, *overrides, steps):
    from tests.training.conftest import losses, run_train

    run = tmp_path / "_".join(o.split("=")[-1] for o in overrides)
    run_train(tiny_store, run, f"training.train_iters={steps}", "model.params_dtype=bfloat16",
              "training.layout_independent_init=true", *overrides, timeout=900)
    return losses(run)


def test_flex_training_step_matches_sdpa(tmp_path, tiny_store):
    a = _train(tmp_path, tiny_store, "model.attention_backend=sdpa", steps=3)
    b = _train(tmp_path, tiny_store, "model.attention_backend=flex", steps=3)
    for step in a:
        assert abs(a[step] - b[step]) <= 2e-2 * max(1.0, abs(a[step]))  # bf16 tolerance


def test_te_fp8_tracks_bf16(tmp_path, tiny_store):
    pytest.importorskip("transformer_engine.pytorch")
    common = ["model.transformer_impl=transformer_engine", "model.hidden_size=128",
              "model.ffn_hidden_size=512", "data.seq_len=64"]  # FP8 GEMMs need dims % 16
    bf16 = _train(tmp_path, tiny_store, *common, steps=50)
    fp8 = _train(tmp_path, tiny_store, *common, "model.fp8=tensorwise", steps=50)
    assert all(torch.isfinite(torch.tensor(v)) for v in fp8.values())
    late = [s for s in bf16 if s > 40]
    gap = sum(abs(fp8[s] - bf16[s]) for s in late) / len(late)
    assert gap < 0.1 * sum(bf16[s] for s in late) / len(late)
