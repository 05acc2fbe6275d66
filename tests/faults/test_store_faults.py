"""A token store with a missing, truncated or corrupted chunk file.

zarr reads a missing chunk as the fill value (0, the EOS id of the test tokenizer): before the
fix ``train``, ``inspect-data`` and ``eval infill`` all ran on EOS-only data and exited 0. The
store now carries ``checksums.json`` (size and CRC-32 of every chunk file, written by
``preprocess``); opening it checks that every listed file is there whole, and ``check-store``
verifies every checksum.
"""

import json

import pytest

from megatron_diffusion.cli import main
from tests.faults.conftest import json_store
from tests.helpers import ROOT
from tests.training.conftest import TINY

CFG = str(ROOT / "examples" / "cpu_demo.yaml")


@pytest.fixture
def store(tmp_path):
    return json_store(tmp_path, "s.zarr", validation_fraction=0.2)


def _cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr()


def _inspect(capsys, store, tmp_path):
    return _cli(capsys, "inspect-data", "--config", CFG, "--out", str(tmp_path / "o.jsonl"),
                f"data.blend=[[1.0, {store}]]", *TINY, "training.train_iters=10")


def _one_error_line(err, *needles):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_token_chunk_is_an_error_not_zeros(store, tmp_path, capsys):
    (store / "tokens" / "c" / "0").unlink()
    code, out = _inspect(capsys, store, tmp_path)
    assert code == 2
    _one_error_line(out.err, str(store), "tokens/c/0", "missing")
    assert not (tmp_path / "o.jsonl").exists()


def test_truncated_token_chunk_is_one_line_naming_it(store, tmp_path, capsys):
    chunk = store / "tokens" / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-100])
    code, out = _inspect(capsys, store, tmp_path)
    assert code == 2
    _one_error_line(out.err, str(store), "tokens/c/0", "truncated")


def test_check_store_verifies_every_checksum(store, capsys):
    code, out = _cli(capsys, "check-store", str(store))
    assert code == 0, out.err
    listed = json.loads((store / "checksums.json").read_text())["files"]
    assert "tokens/c/0" in listed and "doc_offsets/c/0" in listed
    assert f"{len(listed)} chunk files" in out.out
    chunk = store / "tokens" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    chunk.write_bytes(bytes(data))
    code, out = _cli(capsys, "check-store", str(store))
    assert code == 2
    assert "tokens/c/0" in out.err and "checksum" in out.err


def test_check_store_reports_a_missing_file(store, capsys):
    (store / "doc_offsets" / "c" / "0").unlink()
    code, out = _cli(capsys, "check-store", str(store))
    assert code == 2
    assert "doc_offsets/c/0" in out.err and "missing" in out.err


def test_corrupt_shard_index_read_in_a_loader_worker_is_one_line(store, tmp_path, capsys):
    chunk = store / "tokens" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[-6] ^= 0xFF  # inside the shard index (at the end, crc32c-protected): same size
    chunk.write_bytes(bytes(data))
    code, out = _cli(capsys, "inspect-data", "--config", CFG, "--out", str(tmp_path / "o.jsonl"),
                     f"data.blend=[[1.0, {store}]]", *TINY, "training.train_iters=10",
                     "data.num_workers=1")
    assert code == 2
    _one_error_line(out.err, str(store), "tokens/c/0", "fails its checksum")


def test_a_chunk_deleted_after_the_store_was_opened_is_an_error_not_zeros(store):
    """A scratch purge or a re-run of preprocess mid-run: the open-time check passed, the file
    is gone at the read. zarr would read the fill value (0, EOS) and training went on."""
    from megatron_diffusion.data.store import TokenStore
    from megatron_diffusion.errors import UsageError

    opened = TokenStore(store)
    (store / "tokens" / "c" / "0").unlink()
    with pytest.raises(UsageError, match="tokens/c/0 is missing .*changed since the store was opened"):
        opened.read_tokens(0, 8)


def test_bytes_flipped_after_the_store_was_opened_fail_the_checksum_at_first_read(store):
    from megatron_diffusion.data.store import TokenStore
    from megatron_diffusion.errors import UsageError

    opened = TokenStore(store)
    chunk = store / "tokens" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 3] ^= 0x01  # same size: only the checksum can tell
    chunk.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="tokens/c/0 fails its checksum"):
        opened.read_tokens(0, 8)


def test_token_ids_outside_the_vocabulary_are_refused_and_check_store_finds_them(store, capsys):
    """Ids >= the vocabulary (a corrupt writer, another tokenizer) gave an IndexError traceback
    in the embedding, and check-store said ok."""
    import zarr

    from megatron_diffusion.data import checksums
    from megatron_diffusion.data.store import TokenStore
    from megatron_diffusion.errors import UsageError

    vocab = TokenStore(store).vocab_size
    tokens = zarr.open_group(store=str(store), mode="r+", zarr_format=3)["tokens"]
    tokens[3] = vocab + 5
    checksums.write_manifest(store)  # the files are whole: only the ids are wrong
    with pytest.raises(UsageError, match=rf"ids outside \[0, {vocab}\) \(min \d+, max {vocab + 5}\)"):
        TokenStore(store).read_tokens(0, 8)
    code, out = _cli(capsys, "check-store", str(store))
    assert code == 2 and f"max {vocab + 5}" in out.err
