"""gguf-to-mcore refuses bad input through the CLI: one line, exit 2, nothing written."""

import numpy as np
import pytest

from megatron_diffusion import cli
from tests.convert.gguf_fixtures import write_gguf


def _run(capsys, gguf, out) -> str:
    rc = cli.main(["convert", "gguf-to-mcore", "--gguf", str(gguf), "--out", str(out),
                   "--add-mask-token", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("megatron-diffusion convert: error: --gguf")
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    return err


def _minimal_gguf(path, arch: str):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(2)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_another_architecture(tmp_path, capsys):
    err = _run(capsys, _minimal_gguf(tmp_path / "phi.gguf", "phi3"), tmp_path / "out")
    assert "architecture 'phi3' is not supported; supported: llama, qwen2, qwen3" in err


def test_mixture_of_experts_qwen3_is_named(tmp_path, capsys):
    err = _run(capsys, _minimal_gguf(tmp_path / "moe.gguf", "qwen3moe"), tmp_path / "out")
    assert "architecture 'qwen3moe' (mixture of experts) is not supported" in err


def test_unsupported_quantisation_is_named(hf_llama, tmp_path, capsys):
    q5k = {"blk.0.ffn_down.weight": ("Q5_K", np.zeros((64, 176), dtype=np.uint8))}
    gguf = write_gguf(hf_llama, tmp_path / "m.gguf", eos="</s>", override_type=q5k)
    err = _run(capsys, gguf, tmp_path / "out")
    assert "tensor 'blk.0.ffn_down.weight' has type Q5_K, which is not supported" in err
    assert "supported types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K" in err


@pytest.mark.parametrize("keep", [0.7, 0.001])
def test_truncated_file(hf_llama, tmp_path, capsys, keep):
    gguf = write_gguf(hf_llama, tmp_path / "m.gguf", eos="</s>")
    data = gguf.read_bytes()
    gguf.write_bytes(data[: max(int(len(data) * keep), 24)])
    err = _run(capsys, gguf, tmp_path / "out")
    assert "is not a readable GGUF file (truncated or corrupt" in err or "is truncated" in err


def test_tokenizer_without_merges(hf_llama, tmp_path, capsys):
    gguf = write_gguf(hf_llama, tmp_path / "m.gguf", eos="</s>", merges=False)
    assert "BPE tokenizer without merges" in _run(capsys, gguf, tmp_path / "out")


def test_missing_file(tmp_path, capsys):
    assert "does not exist" in _run(capsys, tmp_path / "nope.gguf", tmp_path / "out")


def test_without_the_gguf_package(hf_llama, tmp_path, capsys, monkeypatch):
    gguf = write_gguf(hf_llama, tmp_path / "m.gguf", eos="</s>")
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # import gguf -> ImportError
    assert "needs the gguf package: pip install 'megatron-diffusion[gguf]'" in _run(
        capsys, gguf, tmp_path / "out")
