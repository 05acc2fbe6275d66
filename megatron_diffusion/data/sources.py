"""Read documents from the inputs ``preprocess`` accepts, in a deterministic order.

Accepted inputs (each ``--input`` path):

* ``*.jsonl`` / ``*.jsonl.gz``: one JSON object per line;
* ``*.parquet``: read in record batches with pyarrow (only the needed columns);
* a directory saved by HF ``datasets`` (``save_to_disk``; a ``DatasetDict`` uses its ``train``
  split);
* any other directory: a tree of source files (e.g. the interpreter's ``Lib/``), each matching
  ``--glob`` one document; jsonl/parquet files found in the tree are read as records.

A record is ``(text,)`` in CPT mode or ``(prompt, response)`` in SFT mode. Readers yield records
in batches so memory stays bounded whatever the input size. Bad input raises ``UsageError``
naming the file, the line/row and the field.
"""

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from megatron_diffusion.errors import UsageError, json_object


@dataclass
class SourceSpec:
    """What to read and how records map to documents."""

    inputs: list[str]
    """Files or directories, read in the given order (directories in sorted file order)."""
    fields: tuple[str, ...] = ("text",)
    """Record fields: ``(text,)`` for CPT or ``(prompt, response)`` for SFT."""
    glob: str = "*"
    """File name pattern for files inside source directories."""
    on_undecodable: str = "skip"
    """``skip`` (count and go on) or ``error`` for a file/line that is not UTF-8."""
    batch_size: int = 256
    """Records per yielded batch."""


@dataclass
class SourceStats:
    num_undecodable: int = 0
    """Files (source trees) or lines (jsonl) skipped because they were not UTF-8."""
    num_files: int = 0
    undecodable_examples: list[str] = field(default_factory=list)


def _is_hf_dataset_dir(p: Path) -> bool:
    return any((p / n).exists() for n in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _undecodable(spec: SourceSpec, stats: SourceStats, where: str) -> None:
    if spec.on_undecodable == "error":
        raise UsageError(f"{where}: not valid UTF-8 (pass --on-undecodable skip to skip it)")
    stats.num_undecodable += 1
    if len(stats.undecodable_examples) < 5:
        stats.undecodable_examples.append(where)


def _field_error(name: str, path, where: str) -> UsageError:
    return UsageError(f"record at {path} {where} has no string field {name!r}")


def _read_jsonl(path: Path, spec: SourceSpec, stats: SourceStats) -> Iterator[tuple]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                _undecodable(spec, stats, f"{path} line {line_no}")
                continue
            if not line.strip():
                continue
            obj = json_object(line, f"{path} line {line_no}")
            record = []
            for name in spec.fields:
                value = obj.get(name)
                if not isinstance(value, str):
                    raise _field_error(name, path, f"line {line_no}")
                record.append(value)
            yield tuple(record)


def _check_columns(columns, spec: SourceSpec, path) -> None:
    for name in spec.fields:
        if name not in columns:
            raise UsageError(f"record at {path} row 0 has no string field {name!r} "
                             f"(columns: {', '.join(columns)})")


def _rows_from_columns(cols: dict, spec: SourceSpec, path, first_row: int) -> Iterator[tuple]:
    n = len(cols[spec.fields[0]])
    for i in range(n):
        record = tuple(cols[name][i] for name in spec.fields)
        for name, value in zip(spec.fields, record):
            if not isinstance(value, str):
                raise _field_error(name, path, f"row {first_row + i}")
        yield record


def _read_parquet(path: Path, spec: SourceSpec) -> Iterator[tuple]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends on a corrupt file
        raise UsageError(f"{path}: not a readable parquet file ({e})") from None
    _check_columns(pf.schema_arrow.names, spec, path)
    row = 0
    for rb in pf.iter_batches(batch_size=spec.batch_size, columns=list(spec.fields)):
        cols = {name: rb.column(name).to_pylist() for name in spec.fields}
        yield from _rows_from_columns(cols, spec, path, row)
        row += rb.num_rows


def _read_hf_dataset(path: Path, spec: SourceSpec) -> Iterator[tuple]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError/ValueError variants
        raise UsageError(f"{path}: not a dataset saved with save_to_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise UsageError(f"{path}: DatasetDict without a 'train' split (splits: {', '.join(ds)})")
        ds = ds["train"]
    _check_columns(ds.column_names, spec, path)
    ds = ds.select_columns(list(spec.fields))
    row = 0
    for batch in ds.iter(batch_size=spec.batch_size):
        yield from _rows_from_columns(batch, spec, path, row)
        row += len(batch[spec.fields[0]])


def _read_source_file(path: Path, spec: SourceSpec, stats: SourceStats) -> Iterator[tuple]:
    if spec.fields != ("text",):
        raise UsageError(f"--input {path}: SFT (--prompt-field/--response-field) needs "
                         "jsonl, parquet or dataset records, not source files")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        _undecodable(spec, stats, str(path))
        return
    yield (text,)


def _read_file(path: Path, spec: SourceSpec, stats: SourceStats) -> Iterator[tuple]:
    stats.num_files += 1
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        yield from _read_jsonl(path, spec, stats)
    elif path.name.endswith(".parquet"):
        yield from _read_parquet(path, spec)
    else:
        yield from _read_source_file(path, spec, stats)


def check_inputs(spec: SourceSpec) -> None:
    """Fail early (before any output exists) on a missing or empty input."""
    if not spec.inputs:
        raise UsageError("--input: expected at least one file or directory")
    for inp in spec.inputs:
        p = Path(inp)
        if not p.exists():
            raise UsageError(f"--input: {p} does not exist")
        if p.is_file() and p.stat().st_size == 0:
            raise UsageError(f"--input: {p} is empty")
        if p.is_dir() and not _is_hf_dataset_dir(p) and not any(
            f.is_file() for f in p.rglob(spec.glob)
        ):
            raise UsageError(f"--input: {p} has no files matching --glob {spec.glob!r}")


def iter_records(spec: SourceSpec, stats: SourceStats) -> Iterator[tuple]:
    """Every record of every input, in order."""
    for inp in spec.inputs:
        p = Path(inp)
        if p.is_dir() and _is_hf_dataset_dir(p):
            stats.num_files += 1
            yield from _read_hf_dataset(p, spec)
        elif p.is_dir():
            for f in sorted(f for f in p.rglob(spec.glob) if f.is_file()):
                yield from _read_file(f, spec, stats)
        else:
            yield from _read_file(p, spec, stats)


def iter_batches(spec: SourceSpec, stats: SourceStats) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for record in iter_records(spec, stats):
        batch.append(record)
        if len(batch) == spec.batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
