"""Streaming safetensors reader/writer against the reference ``safetensors`` library."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megatron_diffusion.convert.safetensors_io import (
    INDEX_NAME,
    SafetensorsCheckpoint,
    write_shards,
)
from megatron_diffusion.errors import UsageError


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(5, 3, generator=g),
            "b.weight": torch.randn(4, generator=g).bfloat16(),
            "c.bias": torch.randn(7, 2, generator=g).half()}


def test_writer_output_reads_back_with_safetensors(tmp_path):
    tensors = _tensors()
    specs = [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    asked = []
    files = write_shards(tmp_path, specs, lambda n: asked.append(n) or tensors[n],
                         max_shard_bytes=30)
    assert asked == list(tensors)  # one at a time, in order
    assert len(files) == 3 and files[0] == "model-00001-of-00003.safetensors"
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["weight_map"] == {"a.weight": files[0], "b.weight": files[1],
                                   "c.bias": files[2]}
    for name, t in tensors.items():
        with safe_open(tmp_path / index["weight_map"][name], "pt") as f:
            assert torch.equal(f.get_tensor(name), t)
    reader = SafetensorsCheckpoint(tmp_path)
    assert set(reader.keys()) == set(tensors)
    assert torch.equal(reader.read("c.bias"), tensors["c.bias"])


def test_single_file_and_read_into(tmp_path):
    tensors = _tensors()
    save_file(tensors, tmp_path / "model.safetensors")
    reader = SafetensorsCheckpoint(tmp_path)
    for name, t in tensors.items():
        got = reader.read(name)
        assert got.dtype == t.dtype and torch.equal(got, t)
    out = torch.zeros(8, 3)
    reader.read("a.weight", out=out[2:7])
    assert torch.equal(out[2:7], tensors["a.weight"]) and not out[:2].any()


def test_writer_refuses_a_tensor_that_does_not_match_its_plan(tmp_path):
    with pytest.raises(ValueError, match="planned"):
        write_shards(tmp_path, [("x", (2, 2), torch.float32)], lambda n: torch.zeros(2, 3),
                     max_shard_bytes=10**6)


def test_missing_shard_and_bad_files(tmp_path):
    tensors = _tensors()
    write_shards(tmp_path, [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()],
                 tensors.__getitem__, max_shard_bytes=30)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(UsageError, match="shard file .*model-00002-of-00003.safetensors"):
        SafetensorsCheckpoint(tmp_path)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UsageError, match="safe_serialization"):
        SafetensorsCheckpoint(empty)

    truncated = tmp_path / "trunc"
    truncated.mkdir()
    save_file(tensors, truncated / "model.safetensors")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:-8])
    reader = SafetensorsCheckpoint(truncated)
    last = max(reader.entries, key=lambda n: reader.entries[n].begin)
    with pytest.raises(UsageError, match="truncated"):
        reader.read(last)
