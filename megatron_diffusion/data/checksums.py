"""Per-chunk checksums of a token store: ``STORE/checksums.json``, written by ``preprocess``.

zarr reads a chunk file that is not there as the array's fill value, so a store that lost a file
(a failed copy, a purged scratch file system) would train on zeros without a word. The manifest
lists every chunk (shard) file the writer produced, with its size and CRC-32::

    {"algorithm": "crc32", "files": {"tokens/c/0": [163660, 3735928559], ...}}

Chunks that zarr never wrote (all fill value, e.g. the ``prompt_lengths`` of a CPT store) are
not listed: reading them as the fill value is right. ``missing_or_truncated`` is a stat per
listed file (cheap: ``TokenStore`` runs it at open); ``verify`` reads every byte
(``megatron-diffusion check-store``).
"""

import json
import zlib
from pathlib import Path

from megatron_diffusion.fileio import write_text_atomic

MANIFEST = "checksums.json"
ARRAYS = ("tokens", "doc_offsets", "prompt_lengths", "split")


def crc32_file(path: Path, block: int = 1 << 22) -> int:
    crc = 0
    with open(path, "rb") as f:
        while data := f.read(block):
            crc = zlib.crc32(data, crc)
    return crc


def chunk_files(store: Path) -> list[str]:
    """Relative paths of the chunk files under each array's ``c/`` directory, sorted."""
    store = Path(store)
    found = [p for a in ARRAYS for p in (store / a / "c").rglob("*") if p.is_file()]
    return sorted(p.relative_to(store).as_posix() for p in found)


def write_manifest(store: Path) -> dict:
    store = Path(store)
    files = {rel: [(store / rel).stat().st_size, crc32_file(store / rel)] for rel in chunk_files(store)}
    manifest = {"algorithm": "crc32", "files": files}
    write_text_atomic(store / MANIFEST, json.dumps(manifest, indent=0, sort_keys=True))
    return manifest


def read_manifest(store: Path) -> dict | None:
    """The manifest, or None for a store written before checksums existed."""
    path = Path(store) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from None


def missing_or_truncated(store: Path, manifest: dict) -> list[str]:
    """One message per listed file that is absent or has another size (stat only)."""
    problems = []
    for rel, (size, _) in manifest["files"].items():
        try:
            got = (Path(store) / rel).stat().st_size
        except FileNotFoundError:
            problems.append(f"chunk file {rel} is missing (it would read as zeros)")
            continue
        if got != size:
            problems.append(f"chunk file {rel} is truncated or overwritten ({got} bytes, expected {size})")
    return problems


def verify(store: Path, manifest: dict) -> list[str]:
    """``missing_or_truncated`` plus a CRC-32 of every byte of every listed file."""
    problems = missing_or_truncated(store, manifest)
    bad = {p.split()[2] for p in problems}
    from megatron_diffusion.progress import track

    files = manifest["files"].items()
    for rel, (_, crc) in track(files, f"check-store {Path(store).name}", unit="file"):
        if rel not in bad and crc32_file(Path(store) / rel) != crc:
            problems.append(f"chunk file {rel} fails its checksum (corrupted)")
    return problems
