"""Megatron-LM indexed datasets (.bin/.idx written by megatron-core's IndexedDatasetBuilder) as a
blend entry: the same rows, batches, shards and resume as a zarr store of the same tokens."""

import itertools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_diffusion.data.config import DataConfig
from megatron_diffusion.data.indexed import IndexedTokenSource
from megatron_diffusion.data.loader import DiffusionDataLoader, PackedDataset, open_stores
from megatron_diffusion.data.store import TokenStore
from megatron_diffusion.data.tokenizer import load_tokenizer
from megatron_diffusion.errors import UsageError
from tests.data.conftest import indexed_builder, make_store, random_text, write_indexed_like
from tests.data.test_loader import _assert_same, fake_corrupt

L = 32


@pytest.fixture(scope="module")
def twins(tmp_path_factory, tokenizer_path):
    """A zarr store (no validation split: the format has none) and the same tokens as .bin/.idx."""
    import random

    tmp = tmp_path_factory.mktemp("indexed")
    rng = random.Random(0)
    zarr_path = make_store(tmp, tokenizer_path, [{"text": random_text(rng, 1, 60)} for _ in range(300)],
                           validation_fraction=0.0)
    return zarr_path, write_indexed_like(zarr_path, tmp / "code_text_document")


@pytest.fixture(scope="module")
def sft_twins(tmp_path_factory, sft_store):
    return sft_store, write_indexed_like(sft_store, tmp_path_factory.mktemp("sftidx") / "sft", sft=True)


def _cfg(path, tokenizer, **kw) -> DataConfig:
    base = dict(blend=[(1.0, str(path))], seq_len=L, micro_batch_size=2, global_batch_size=4,
                num_workers=0, seed=3, tokenizer=str(tokenizer))
    return DataConfig(**{**base, **kw})


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def test_same_rows_as_the_zarr_store_of_the_same_tokens(twins, tokenizer_path):
    zarr_path, prefix = twins
    a, b = PackedDataset(_cfg(zarr_path, tokenizer_path)), PackedDataset(_cfg(prefix, tokenizer_path))
    assert isinstance(b.stores[0], IndexedTokenSource) and b.stores[0].num_docs == 300
    assert b.samples_per_epoch == a.samples_per_epoch > 100
    for g in itertools.chain(range(a.samples_per_epoch), range(a.samples_per_epoch, a.samples_per_epoch + 20)):
        ra, rb = a[g], b[g]
        assert torch.equal(ra.tokens_BL, rb.tokens_BL) and torch.equal(ra.document_ids_BL, rb.document_ids_BL)


def test_written_as_preprocess_data_py_writes_it(twins, tokenizer_path, tmp_path):
    """Megatron-LM's tools/preprocess_data.py (not in megatron-core's wheel) calls
    ``add_document(ids, sentence_lens)`` with ``DType.optimal_dtype(vocab)``; with
    --split-sentences a document is several sequences: still one document here."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    zarr_path, _ = twins
    store = TokenStore(zarr_path)
    off = store.read_doc_array("doc_offsets")
    prefix = tmp_path / "code_text_sentence"
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(store.vocab_size))
    for d in range(store.num_docs):
        ids = store.read_tokens(int(off[d]), int(off[d + 1])).tolist()
        cut = sorted({len(ids) // 3, 2 * len(ids) // 3} - {0})
        builder.add_document(ids, np.diff([0, *cut, len(ids)]).tolist())
    builder.finalize(f"{prefix}.idx")
    a, b = PackedDataset(_cfg(zarr_path, tokenizer_path)), PackedDataset(_cfg(prefix, tokenizer_path))
    assert len(b.stores[0]._index.sequence_lengths) > 2 * store.num_docs
    for g in range(a.samples_per_epoch):
        assert torch.equal(a[g].tokens_BL, b[g].tokens_BL) and torch.equal(a[g].document_ids_BL, b[g].document_ids_BL)


def test_corrupted_batches_and_dp_shards_match_the_zarr_store(twins, tokenizer_path):
    zarr_path, prefix = twins
    for rank in range(2):
        kw = dict(data_parallel_rank=rank, data_parallel_size=2, corrupt_fn=fake_corrupt)
        cfg = dict(global_batch_size=8)
        want = _take(DiffusionDataLoader(_cfg(zarr_path, tokenizer_path, **cfg), **kw), 5)
        got = _take(DiffusionDataLoader(_cfg(prefix, tokenizer_path, **cfg), **kw), 5)
        for x, y in zip(got, want):
            _assert_same(x, y)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_continues_exactly(twins, tokenizer_path, workers):
    _, prefix = twins
    reference = _take(DiffusionDataLoader(_cfg(prefix, tokenizer_path), corrupt_fn=fake_corrupt), 9)
    cfg = _cfg(prefix, tokenizer_path, num_workers=workers)
    loader = DiffusionDataLoader(cfg, corrupt_fn=fake_corrupt)
    first = _take(loader, 4)
    state = loader.state_dict()
    assert state["consumed_samples"] == 8 and state["store_ids"] == [loader.dataset.stores[0].store_id]
    resumed = DiffusionDataLoader(cfg, corrupt_fn=fake_corrupt)
    resumed.load_state_dict(state)
    for got, want in zip(first + _take(resumed, 5), reference):
        _assert_same(got, want)


def test_resume_on_another_dataset_is_refused(twins, tokenizer_path, tmp_path):
    zarr_path, prefix = twins
    state = DiffusionDataLoader(_cfg(prefix, tokenizer_path)).state_dict()
    copy = tmp_path / "copy"
    for s in (".bin", ".idx"):  # a copied dataset keeps its id: the state loads
        copy.with_suffix(s).write_bytes(open(prefix + s, "rb").read())
    DiffusionDataLoader(_cfg(copy, tokenizer_path)).load_state_dict(state)
    other = write_indexed_like(zarr_path, tmp_path / "other", dtype=np.int32)
    with pytest.raises(UsageError, match="store_ids was"):
        DiffusionDataLoader(_cfg(other, tokenizer_path)).load_state_dict(state)


def test_blend_with_a_zarr_store(twins, cpt_store, tokenizer_path):
    zarr_path, prefix = twins
    cfg = _cfg(prefix, tokenizer_path, blend=[(1.0, prefix), (1.0, str(cpt_store))])
    ds = PackedDataset(cfg)
    assert [type(s).__name__ for s in ds.stores] == ["IndexedTokenSource", "TokenStore"]
    assert sorted(set(ds.blend.dataset_index.tolist())) == [0, 1]
    alone = PackedDataset(_cfg(prefix, tokenizer_path))
    g = int(np.argmax(np.asarray(ds.blend.dataset_index) == 0))
    assert torch.equal(ds[g].tokens_BL, alone[ds.blend.locate(g)[1]].tokens_BL)


def test_validation_split_as_preprocess_holds_it_out(tmp_path, tokenizer_path, cpt_store):
    """cpt_store holds out 10% (preprocess's default seed): its twin with the same fraction has
    the same train and validation rows; the fraction is part of the dataset's id."""
    prefix = write_indexed_like(cpt_store, tmp_path / "held")
    for split in ("train", "validation"):
        a = PackedDataset(_cfg(cpt_store, tokenizer_path, split=split))
        b = PackedDataset(_cfg(prefix, tokenizer_path, split=split, indexed_validation_fraction=0.1))
        assert b.samples_per_epoch == a.samples_per_epoch > 0
        assert all(torch.equal(a[g].tokens_BL, b[g].tokens_BL) for g in range(a.samples_per_epoch))
    ids = {f: open_stores(_cfg(prefix, tokenizer_path, indexed_validation_fraction=f))[0].store_id
           for f in (0.0, 0.1)}
    assert ids[0.0] != ids[0.1]
    with pytest.raises(UsageError, match="no documents in split 'validation'"):
        PackedDataset(_cfg(prefix, tokenizer_path, split="validation"))


def test_sft_prompt_masks_match_the_zarr_store(sft_twins, tokenizer_path):
    sft_store, prefix = sft_twins
    a = PackedDataset(_cfg(sft_store, tokenizer_path, mode="sft", seq_len=64))
    b = PackedDataset(_cfg(prefix, tokenizer_path, mode="sft", seq_len=64))
    assert b.stores[0].mode == "sft" and b.samples_per_epoch == a.samples_per_epoch
    masked = 0
    for g in range(a.samples_per_epoch):
        ra, rb = a[g], b[g]
        assert torch.equal(ra.tokens_BL, rb.tokens_BL) and torch.equal(ra.prompt_mask_BL, rb.prompt_mask_BL)
        masked += int(rb.prompt_mask_BL.sum())
    assert masked > 0


def test_sft_mode_needs_prompt_and_response_sequences(twins, tokenizer_path):
    with pytest.raises(UsageError, match="two sequences, prompt and response"):
        PackedDataset(_cfg(twins[1], tokenizer_path, mode="sft"))


def test_blend_entry_may_name_the_bin_file(twins, tokenizer_path):
    assert PackedDataset(_cfg(twins[1] + ".bin", tokenizer_path)).stores[0].path.name == "code_text_document"


def test_empty_documents_are_in_no_split(tmp_path, tokenizer_path):
    eos = load_tokenizer(tokenizer_path).eos_id
    builder = indexed_builder(tmp_path / "e")
    for doc in ([5, 6, eos], [], [7, eos] * 20, []):
        if doc:
            builder.add_item(torch.tensor(doc))
        builder.end_document()
    builder.finalize(str(tmp_path / "e.idx"))
    source = open_stores(_cfg(tmp_path / "e", tokenizer_path, seq_len=8))[0]
    assert source.read_doc_array("doc_offsets").tolist() == [0, 3, 3, 43, 43]
    assert source.read_doc_array("split").tolist() == [0, -1, 0, -1]
    rows = PackedDataset(_cfg(tmp_path / "e", tokenizer_path, seq_len=8))
    assert rows.samples_per_epoch == 43 // 8


# --- the tokenizer's identity, as far as the format allows ---------------------------------------

def test_needs_data_tokenizer(twins):
    with pytest.raises(UsageError, match="data.tokenizer: blend entry .* record no tokenizer"):
        open_stores(DataConfig(blend=[(1.0, twins[1])]))


def test_data_tokenizer_and_fraction_are_checked(twins, tmp_path):
    with pytest.raises(UsageError, match="data.tokenizer: .*absent.json is not a file"):
        open_stores(_cfg(twins[1], tmp_path / "absent.json"))
    with pytest.raises(UsageError, match=r"data.indexed_validation_fraction: got 1.0, expected a number in \[0, 1\)"):
        _cfg(twins[1], "tok.json", indexed_validation_fraction=1.0).validate()


def test_other_vocabulary_or_eos_is_refused(twins, tmp_path):
    from tests.helpers import make_tokenizer

    small = make_tokenizer(tmp_path / "small.json", 280)  # ids of the data lie beyond it
    with pytest.raises(UsageError, match=r"ids outside \[0, 280\)"):
        PackedDataset(_cfg(twins[1], small))[0]
    # what the format cannot show: another tokenizer with room for every id and the same EOS id
    # (0 in both) reads; only the hash against the run's other data or checkpoint refuses it
    source = IndexedTokenSource(twins[1], load_tokenizer(make_tokenizer(tmp_path / "big.json", 900)))
    assert len(source.read_tokens(0, source.num_tokens)) == source.num_tokens
    with pytest.raises(UsageError, match="data.tokenizer .*big.json has tokenizer_hash"):
        source.check_compatible(tokenizer_hash=load_tokenizer(twins[0] / "tokenizer.json").hash)
    blend = [(1.0, str(twins[0])), (1.0, twins[1])]
    with pytest.raises(UsageError, match="store .*s.zarr: tokenizer_hash"):
        open_stores(_cfg(twins[1], tmp_path / "big.json", blend=blend))


def test_documents_without_eos_are_refused(tmp_path, tokenizer_path):
    builder = indexed_builder(tmp_path / "noeod")
    for _ in range(40):
        builder.add_item(torch.tensor([5, 6, 7]))  # preprocess_data.py without --append-eod
        builder.end_document()
    builder.finalize(str(tmp_path / "noeod.idx"))
    eos = load_tokenizer(tokenizer_path).eos_id
    with pytest.raises(UsageError, match=rf"document 0 ends with id 7, not the EOS id {eos} .*--append-eod"):
        open_stores(_cfg(tmp_path / "noeod", tokenizer_path))


def test_eos_checked_on_every_document_a_row_reads(tmp_path, tokenizer_path):
    eos = load_tokenizer(tokenizer_path).eos_id
    builder = indexed_builder(tmp_path / "mid")
    for d in range(40):  # the documents checked at open (first and last 16) all end with EOS
        builder.add_item(torch.tensor([5, 6, 7 if d == 20 else eos]))
        builder.end_document()
    builder.finalize(str(tmp_path / "mid.idx"))
    ds = PackedDataset(_cfg(tmp_path / "mid", tokenizer_path, seq_len=8))
    with pytest.raises(UsageError, match="document 20 ends with id 7"):
        for g in range(ds.samples_per_epoch):
            ds[g]


def test_uint16_tokens_cannot_hold_a_larger_vocabulary(twins, tokenizer_path):
    import dataclasses

    tokenizer = dataclasses.replace(load_tokenizer(tokenizer_path), vocab_size=151_666)  # Qwen's
    with pytest.raises(UsageError, match="stores tokens as uint16 .* 151666 ids"):
        IndexedTokenSource(twins[1], tokenizer)


# --- bad files: one line, exit 2 --------------------------------------------------------------

def _broken_copy(prefix, tmp_path, name, edit):
    out = tmp_path / name
    for s in (".bin", ".idx"):
        data = open(prefix + s, "rb").read()
        out.with_suffix(s).write_bytes(edit(s, data))
    return out


def _inspect(capsys, tmp_path, prefix, tokenizer_path):
    from megatron_diffusion.cli import main
    from tests.helpers import ROOT
    from tests.training.conftest import TINY

    out = tmp_path / "records.jsonl"
    code = main(["inspect-data", "--config", str(ROOT / "examples" / "cpu_demo.yaml"), "--out", str(out),
                 f"data.blend=[[1.0, {prefix}]]", f"data.tokenizer={tokenizer_path}", *TINY,
                 "training.train_iters=10"])
    err = capsys.readouterr().err
    return code, err, out


def test_inspect_data_reads_an_indexed_dataset(twins, tokenizer_path, tmp_path, capsys):
    code, err, out = _inspect(capsys, tmp_path, twins[1], tokenizer_path)
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 2


def _truncate_bin(s, data):
    return data[:-2] if s == ".bin" else data


def _idx_dtype_int32(s, data):  # the dtype code follows the 9-byte header and 8-byte version
    return data[:17] + struct.pack("<B", 4) + data[18:] if s == ".idx" else data


def _idx_dtype_float(s, data):
    return data[:17] + struct.pack("<B", 7) + data[18:] if s == ".idx" else data


def _truncate_idx(s, data):
    return data[:100] if s == ".idx" else data


def _not_an_idx(s, data):
    return b"NOTANIDX!" + data[9:] if s == ".idx" else data


@pytest.mark.parametrize("edit,message", [
    (_truncate_bin, r"broken\.bin is \d+ bytes, but .*broken\.idx describes \d+ uint16 tokens"),
    (_idx_dtype_int32, r"broken\.bin is \d+ bytes, but .*describes \d+ int32 tokens .*another dtype"),
    (_idx_dtype_float, "gives token dtype float32, expected an integer type"),
    (_truncate_idx, r"broken\.idx is not a readable Megatron index \(truncated"),
    (_not_an_idx, r"broken\.idx is not a readable Megatron index .*bad header"),
])
def test_bad_files_are_one_line_exit_2(twins, tokenizer_path, tmp_path, capsys, edit, message):
    broken = _broken_copy(twins[1], tmp_path, "broken", edit)
    code, err, out = _inspect(capsys, tmp_path, broken, tokenizer_path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("megatron-diffusion inspect-data: error: indexed dataset ")
    assert __import__("re").search(message, err), err
    assert not out.exists()


@pytest.mark.parametrize("missing", [".bin", ".idx"])
def test_missing_file_is_one_line_exit_2(twins, tokenizer_path, tmp_path, capsys, missing):
    broken = _broken_copy(twins[1], tmp_path, "broken", lambda s, data: data)
    broken.with_suffix(missing).unlink()
    code, err, _ = _inspect(capsys, tmp_path, broken, tokenizer_path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"broken{missing} is missing" in err


def test_bin_truncated_after_open_is_refused_at_the_next_read(twins, tokenizer_path, tmp_path):
    broken = _broken_copy(twins[1], tmp_path, "later", lambda s, data: data)
    ds = PackedDataset(_cfg(broken, tokenizer_path))
    ds[0]
    with open(broken.with_suffix(".bin"), "r+b") as f:
        f.truncate(100)
    with pytest.raises(UsageError, match="later.bin is 100 bytes.*changed since the dataset was opened"):
        ds[1]


def test_check_store_reads_every_token_and_document_end(twins, tokenizer_path, tmp_path, capsys):
    from megatron_diffusion.cli import main

    assert main(["check-store", twins[1], "--tokenizer", str(tokenizer_path)]) == 0
    assert "ok, every token and document end read" in capsys.readouterr().out
    eos = load_tokenizer(tokenizer_path).eos_id
    builder = indexed_builder(tmp_path / "bad")
    for d in range(40):  # open checks documents 0-15 and 24-39 only
        builder.add_item(torch.tensor([5, 9999 if d == 30 else 6, 7 if d == 20 else eos]))
        builder.end_document()
    builder.finalize(str(tmp_path / "bad.idx"))
    assert main(["check-store", str(tmp_path / "bad"), "--tokenizer", str(tokenizer_path)]) == 2
    err = _without_progress(capsys.readouterr().err)
    assert "ids outside [0, " in err[0] and "max 9999" in err[0]
    assert "document 20 ends with id 7" in err[1] and "1 of 1 stores failed" in err[2]
    assert main(["check-store", twins[1]]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def _without_progress(err: str) -> list[str]:
    return [line for line in err.splitlines() if not line.startswith("[check-store ")]


def test_check_store_goes_on_after_a_dataset_that_cannot_open(twins, tokenizer_path, tmp_path, capsys):
    """A truncated .bin fails at open; the stores after it are still checked (as for zarr)."""
    from megatron_diffusion.cli import main

    broken = tmp_path / "broken"
    for suffix in (".bin", ".idx"):
        data = Path(f"{twins[1]}{suffix}").read_bytes()
        (tmp_path / f"broken{suffix}").write_bytes(_truncate_bin(suffix, data))
    assert main(["check-store", str(broken), str(twins[1]), "--tokenizer", str(tokenizer_path)]) == 2
    captured = capsys.readouterr()
    err = _without_progress(captured.err)
    assert err[0].startswith(f"indexed dataset {broken}: ") and "broken.bin is" in err[0]
    assert f"indexed dataset {twins[1]}: ok" in captured.out
    assert err[1] == "megatron-diffusion check-store: error: 1 of 2 stores failed the check"
    assert f"[check-store {twins[1]}]" in captured.err  # progress lines, plain under capture
