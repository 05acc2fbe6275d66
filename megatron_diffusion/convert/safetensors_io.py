"""Streaming safetensors: read one tensor at a time, write shards without holding them.

The format is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` and the raw
tensor bytes. Both sides here work from the header alone:

* ``SafetensorsCheckpoint`` parses the headers of every shard (``model.safetensors`` or the
  shards listed in ``model.safetensors.index.json``) and ``read(name)`` reads that tensor's bytes
  with ``readinto`` straight into a fresh tensor. No memory map: pages of an mmap'd file count in
  the process's resident set while it is open, which for an unsharded multi-GB file would double
  the peak of a conversion.
* ``write_shards`` computes every header from the tensor shapes first, then asks for tensors one
  by one and appends their bytes, so an export holds a single tensor beyond the model.
"""

import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_diffusion.errors import UsageError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass(frozen=True)
class Entry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    """Absolute byte offset in the file."""
    nbytes: int


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise UsageError(f"--hf: {path} is not a safetensors file (truncated)")
        (size,) = struct.unpack("<Q", head)
        if size > 100_000_000 or size > os.path.getsize(path):
            raise UsageError(f"--hf: {path} is not a safetensors file (bad header size)")
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"--hf: {path} is not a safetensors file (bad header)") from None
    return header, 8 + size


class SafetensorsCheckpoint:
    """The tensors of an HF model directory, by name, read lazily."""

    def __init__(self, hf_dir):
        self.dir = Path(hf_dir)
        index = self.dir / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError):
                raise UsageError(f"--hf: {index} is not a safetensors index (no weight_map)") from None
            files = sorted(set(weight_map.values()))
        elif (self.dir / SINGLE_NAME).is_file():
            weight_map, files = None, [SINGLE_NAME]
        else:
            other = sorted(p.name for p in self.dir.glob("*.bin")) or sorted(
                p.name for p in self.dir.glob("*.safetensors"))
            hint = (f" (found {', '.join(other[:3])}: re-save with "
                    "save_pretrained(..., safe_serialization=True))") if other else ""
            raise UsageError(f"--hf: {self.dir} has no {SINGLE_NAME} nor {INDEX_NAME}{hint}")
        missing = [f for f in files if not (self.dir / f).is_file()]
        if missing:
            raise UsageError(f"--hf: shard file {self.dir / missing[0]} listed in {INDEX_NAME} "
                             f"is missing ({len(missing)} of {len(files)} shards missing)")
        self.entries: dict[str, Entry] = {}
        for name in files:
            path = self.dir / name
            header, data_start = _read_header(path)
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                if info.get("dtype") not in DTYPES:
                    raise UsageError(f"--hf: {path}: tensor {key!r} has unsupported dtype "
                                     f"{info.get('dtype')!r}")
                begin, end = info["data_offsets"]
                self.entries[key] = Entry(path, DTYPES[info["dtype"]], tuple(info["shape"]),
                                          data_start + begin, end - begin)
        if weight_map is not None:
            for key, file in weight_map.items():
                if key not in self.entries or self.entries[key].file.name != file:
                    raise UsageError(f"--hf: {INDEX_NAME} lists tensor {key!r} in {file}, "
                                     "which does not contain it")

    def keys(self):
        return self.entries.keys()

    def __contains__(self, name) -> bool:
        return name in self.entries

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor ``name`` in a new tensor, or read into ``out`` (contiguous, same shape
        and dtype) to avoid an extra copy."""
        e = self.entries[name]
        itemsize = torch.empty((), dtype=e.dtype).element_size()
        if math.prod(e.shape) * itemsize != e.nbytes:
            raise UsageError(f"--hf: {e.file}: tensor {name!r} has {e.nbytes} bytes for shape "
                             f"{list(e.shape)} (corrupt file)")
        if out is None:
            out = torch.empty(e.shape, dtype=e.dtype)
        if tuple(out.shape) != e.shape or out.dtype != e.dtype or not out.is_contiguous():
            raise ValueError(f"read {name!r}: out must be a contiguous {e.dtype} {list(e.shape)}")
        buf = out.view(-1).view(torch.uint8) if out.numel() else out.view(torch.uint8)
        with open(e.file, "rb") as f:
            f.seek(e.begin)
            got = f.readinto(memoryview(buf.numpy()))
        if got != e.nbytes:
            raise UsageError(f"--hf: {e.file} is truncated (tensor {name!r})")
        return out


def _plan_shards(specs: list[tuple[str, tuple, torch.dtype]], max_shard_bytes: int):
    shards, current, size = [], [], 0
    for name, shape, dtype in specs:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape, dtype, nbytes))
        size += nbytes
    if current:
        shards.append(current)
    return shards


def write_shards(out_dir, specs: list[tuple[str, tuple, torch.dtype]],
                 produce: Callable[[str], torch.Tensor], *, max_shard_bytes: int,
                 on_tensor: Callable[[str], None] | None = None) -> list[str]:
    """Write ``specs`` (name, shape, dtype; in order) as HF-style sharded safetensors, asking
    ``produce(name)`` for one tensor at a time. Returns the file names written."""
    out_dir = Path(out_dir)
    shards = _plan_shards(specs, max_shard_bytes)
    names = ([SINGLE_NAME] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    for file, shard in zip(names, shards):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, dtype, nbytes in shard:
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as safetensors writes it
        with open(out_dir / file, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, shape, dtype, nbytes in shard:
                t = produce(name)
                if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                    raise ValueError(f"tensor {name!r}: produced {tuple(t.shape)} {t.dtype}, "
                                     f"planned {tuple(shape)} {dtype}")
                f.write(memoryview(t.detach().contiguous().cpu().view(torch.uint8).numpy()))
                weight_map[name] = file
                if on_tensor is not None:
                    on_tensor(name)
        total += offset
    if len(shards) > 1:
        (out_dir / INDEX_NAME).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return names
