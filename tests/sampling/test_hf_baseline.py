"""bench-sampler --hf-baseline: transformers' generate on the same prompts, from an HF directory
or a GGUF, interleaved with our decoders (tiny random Llama converted here)."""

import json

import pytest

from megatron_diffusion.cli import main
from tests.convert.gguf_fixtures import write_gguf
from tests.convert.hf_fixtures import make_hf_model


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory):
    from megatron_diffusion.convert.hf_to_mcore import convert_hf_to_mcore

    root = tmp_path_factory.mktemp("hfb")
    hf_dir = make_hf_model(root / "hf", "llama", tied=True, num_layers=2)
    convert_hf_to_mcore(hf_dir, root / "mc", add_mask_token=True, progress=False)
    return hf_dir, root / "mc"


def _bench(ours, hf, capsys, *extra):
    argv = ["bench-sampler", "--checkpoint", str(ours), "--num-prompts", "2", "--prompt-len",
            "6", "--max-new-tokens", "5", "--batch-size", "1", "--ignore-eos", "--json",
            "--repeats", "2", "--hf-baseline", str(hf), *extra]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_hf_baseline_from_directory_and_gguf(hf_and_ours, tmp_path, capsys):
    hf_dir, ours = hf_and_ours
    gguf = write_gguf(hf_dir, tmp_path / "tiny.gguf", eos="</s>")
    for source in (hf_dir, gguf):
        out = _bench(ours, source, capsys)
        hf = out["hf_baseline"]
        assert hf["num_tokens"] == out["ar_baseline"]["num_tokens"] == 10
        assert hf["decoder"].startswith("transformers") and hf["tokens_per_second"] > 0
        assert len(hf["wall_seconds_each"]) == 2 == len(out["ar_baseline"]["wall_seconds_each"])
        pairs = [a / h for a, h in zip(out["ar_baseline"]["tokens_per_second_each"],
                                       hf["tokens_per_second_each"])]
        assert out["ar_over_hf_tokens_per_second_each"] == pytest.approx(pairs)
        assert out["ar_over_hf_tokens_per_second"] == pytest.approx(sum(pairs) / 2)  # median
        assert out["ar_over_hf_tokens_per_second_spread"] == pytest.approx(sorted(pairs))
        assert hf["num_model_calls"] == 10  # 2 prompts x 5 tokens at batch 1: every forward
        assert out["diffusion_over_hf_tokens_per_second"] > 0
        assert out["hf_same_tokens_as_ar"] == 1.0  # same model, same greedy tokens
    argv = ["bench-sampler", "--checkpoint", str(ours), "--num-prompts", "1", "--prompt-len",
            "6", "--max-new-tokens", "3", "--hf-baseline", str(gguf)]
    assert main(argv) == 0  # the table
    assert "vs hf generate: ar" in capsys.readouterr().out


@pytest.mark.parametrize("batch_size,calls", [(1, 12), (2, 6), (4, 3)])
def test_hf_model_calls_are_summed_over_batches(hf_and_ours, batch_size, calls):
    from megatron_diffusion.sampling import bench
    from megatron_diffusion.sampling.hf_baseline import HFGenerate, load_hf_model

    hf = HFGenerate(load_hf_model(str(hf_and_ours[0])), max_new_tokens=3, stop_ids=(),
                    pad_id=0, batch_size=batch_size)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    _, completions, num_calls = bench._run(hf, prompts)
    assert [len(c.tokens) for c in completions] == [3] * 4
    assert num_calls == calls  # 4 prompts x 3 tokens / batch_size forwards


@pytest.mark.parametrize("make,message", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no config.json"),
])
def test_bad_hf_baseline_is_one_line(hf_and_ours, tmp_path, capsys, make, message):
    argv = ["bench-sampler", "--checkpoint", str(hf_and_ours[1]), "--num-prompts", "1",
            "--prompt-len", "4", "--max-new-tokens", "2", "--hf-baseline", str(make(tmp_path))]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_qwen3_greedy_decode_is_transformers_generate(tmp_path, capsys):
    """A converted Qwen3 (q/k norms in the KV-cached, lean forward; head_dim 32 of width 64):
    our AR decode gives transformers' greedy tokens."""
    from megatron_diffusion.convert.hf_to_mcore import convert_hf_to_mcore

    hf_dir = make_hf_model(tmp_path / "hf", "qwen3", tied=True, num_layers=2, head_dim=32,
                           initializer_range=0.2)  # at 0.02 the tokens ignore the q/k norms
    convert_hf_to_mcore(hf_dir, tmp_path / "mc", add_mask_token=True, progress=False)
    out = _bench(tmp_path / "mc", hf_dir, capsys)
    assert out["hf_baseline"]["num_tokens"] == out["ar_baseline"]["num_tokens"] == 10
    assert out["hf_same_tokens_as_ar"] == 1.0
