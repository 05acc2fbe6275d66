import gzip
import json

import numpy as np
import pytest
import zarr

from megatron_diffusion.cli import main
from megatron_diffusion.data import ingest
from megatron_diffusion.data.ingest import IngestConfig, preprocess
from megatron_diffusion.data.writer import split_codes
from megatron_diffusion.data.store import TokenStore
from megatron_diffusion.data.tokenizer import load_tokenizer
from megatron_diffusion.errors import UsageError
from tests.data.conftest import stdlib_slice, write_jsonl


def _docs(store: TokenStore) -> list[np.ndarray]:
    off = store.read_doc_array("doc_offsets")
    return [store.read_tokens(int(a), int(b)) for a, b in zip(off[:-1], off[1:])]


def test_stdlib_slice_end_to_end(tmp_path, tokenizer_path):
    files = stdlib_slice(30)
    src = tmp_path / "src"
    for i, f in enumerate(files):  # one flat tree of the 30 files, order kept by the name prefix
        (src / f"{i:02d}_{f.parent.name}_{f.name}").parent.mkdir(exist_ok=True)
        (src / f"{i:02d}_{f.parent.name}_{f.name}").write_bytes(f.read_bytes())
    tok = load_tokenizer(tokenizer_path)
    stores = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.zarr"
        rc = main(["preprocess", "--input", str(src), "--glob", "*.py", "--output", str(out),
                   "--tokenizer", str(tokenizer_path), "--workers", str(workers),
                   "--validation-fraction", "0.2", "--seed", "7"])
        assert rc == 0
        stores[workers] = TokenStore(out)
    s = stores[2]
    assert s.num_docs == 30 and s.vocab_size == tok.vocab_size and s.tokenizer_hash == tok.hash
    docs = _docs(s)
    for f, d in zip(sorted(src.iterdir()), docs):
        assert d[-1] == tok.eos_id and tok.eos_id not in d[:-1]
        assert tok.decode(d[:-1]) == f.read_text()
    assert s.num_tokens == sum(len(d) for d in docs)
    # parallel tokenization writes exactly what one process writes
    np.testing.assert_array_equal(stores[1].read_tokens(0, s.num_tokens), s.read_tokens(0, s.num_tokens))
    split = s.read_doc_array("split")
    np.testing.assert_array_equal(split, split_codes(np.arange(30), 7, 0.2))
    assert s.attrs["num_validation_docs"] == int(split.sum())
    assert not s.read_doc_array("prompt_lengths").any()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_record_formats_agree(tmp_path, tokenizer_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"content": f"print({i})\n" * (i % 5 + 1), "other": i} for i in range(40)]
    write_jsonl(tmp_path / "a.jsonl", records)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "a.parquet", row_group_size=7)
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}).save_to_disk(str(tmp_path / "dd"))
    tokens = []
    for name in ("a.jsonl", "a.jsonl.gz", "a.parquet", "ds", "dd"):
        out = tmp_path / f"{name}.zarr"
        preprocess(IngestConfig(inputs=[str(tmp_path / name)], output=str(out), text_field="content",
                                tokenizer=str(tokenizer_path), batch_size=16))
        s = TokenStore(out)
        assert s.num_docs == 40
        tokens.append(s.read_tokens(0, s.num_tokens))
    for t in tokens[1:]:
        np.testing.assert_array_equal(tokens[0], t)


def test_sft_prompt_lengths(tmp_path, tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    records = [{"q": "def add(a, b):", "a": " return a + b"}, {"q": "x = ", "a": "1"}]
    out = tmp_path / "sft.zarr"
    preprocess(IngestConfig(inputs=[str(write_jsonl(tmp_path / "s.jsonl", records))], output=str(out),
                            tokenizer=str(tokenizer_path), prompt_field="q", response_field="a"))
    s = TokenStore(out)
    assert s.mode == "sft"
    docs, plen = _docs(s), s.read_doc_array("prompt_lengths")
    for r, d, n in zip(records, docs, plen):
        assert list(d[:n]) == tok.encode(r["q"]) and list(d[n:-1]) == tok.encode(r["a"])


def test_store_chunks_are_sharded_and_compressed(tmp_path, tokenizer_path):
    records = [{"text": "abc " * 50} for _ in range(100)]
    out = tmp_path / "c.zarr"
    preprocess(IngestConfig(inputs=[str(write_jsonl(tmp_path / "c.jsonl", records))], output=str(out),
                            tokenizer=str(tokenizer_path), token_chunk=256, token_shard=1024))
    arr = zarr.open_group(str(out), mode="r")["tokens"]
    assert arr.chunks == (256,) and arr.shards == (1024,) and arr.dtype == np.int32
    s = TokenStore(out)
    assert len(list((out / "tokens" / "c").iterdir())) == -(-s.num_tokens // 1024)
    whole = np.concatenate([s.read_tokens(i, min(i + 300, s.num_tokens)) for i in range(0, s.num_tokens, 300)])
    np.testing.assert_array_equal(whole, s.read_tokens(0, s.num_tokens))


# --- bad input: a one-line UsageError naming the culprit, and nothing left behind -------------

def _assert_nothing_left(directory, out):
    assert not out.exists()
    assert [p.name for p in directory.iterdir() if p.name.startswith(f".{out.name}")] == []


def _run_bad(tmp_path, tokenizer_path, inputs, match, **kw):
    out = tmp_path / "bad.zarr"
    cfg = IngestConfig(inputs=[str(p) for p in inputs], output=str(out), tokenizer=str(tokenizer_path), **kw)
    with pytest.raises(UsageError, match=match) as e:
        preprocess(cfg)
    assert "\n" not in str(e.value)
    _assert_nothing_left(tmp_path, out)


def test_missing_and_empty_input(tmp_path, tokenizer_path):
    _run_bad(tmp_path, tokenizer_path, [tmp_path / "nope.jsonl"], r"--input: .*nope\.jsonl does not exist")
    (tmp_path / "empty.jsonl").write_text("")
    _run_bad(tmp_path, tokenizer_path, [tmp_path / "empty.jsonl"], r"empty\.jsonl is empty")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    _run_bad(tmp_path, tokenizer_path, [tmp_path / "blank.jsonl"], "no documents found")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.txt").write_text("x")
    _run_bad(tmp_path, tokenizer_path, [tmp_path / "tree"], r"no files matching --glob '\*\.py'", glob="*.py")


def test_undecodable_skip_or_error(tmp_path, tokenizer_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "good.py").write_text("x = 1\n")
    (tree / "bad.py").write_bytes(b"x = '\xff\xfe'\n")
    _run_bad(tmp_path, tokenizer_path, [tree], r"bad\.py: not valid UTF-8", on_undecodable="error")
    out = tmp_path / "ok.zarr"
    summary = preprocess(IngestConfig(inputs=[str(tree)], output=str(out), tokenizer=str(tokenizer_path)))
    assert summary["num_undecodable_skipped"] == 1 and TokenStore(out).num_docs == 1
    assert "bad.py" in summary["undecodable_examples"][0]


def test_record_without_field_names_field_file_and_line(tmp_path, tokenizer_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"text": "ok"}] * 600 + [{"txt": "oops"}]  # the bad line comes after full batches
    src = write_jsonl(tmp_path / "r.jsonl", records)
    for workers in (1, 2):
        _run_bad(tmp_path, tokenizer_path, [src], r"r\.jsonl line 601 has no string field 'text'",
                 workers=workers)
    pq.write_table(pa.Table.from_pylist([{"body": "x"}]), tmp_path / "r.parquet")
    _run_bad(tmp_path, tokenizer_path, [tmp_path / "r.parquet"], r"r\.parquet row 0 has no string field 'text'")
    pq.write_table(pa.Table.from_pylist([{"text": "x"}, {"text": None}]), tmp_path / "n.parquet")
    _run_bad(tmp_path, tokenizer_path, [tmp_path / "n.parquet"], r"n\.parquet row 1 has no string field 'text'")
    datasets.Dataset.from_list([{"body": "x"}]).save_to_disk(str(tmp_path / "ds"))
    _run_bad(tmp_path, tokenizer_path, [tmp_path / "ds"], r"ds row 0 has no string field 'text'")
    (tmp_path / "j.jsonl").write_text('{"text": "a"}\n{not json\n')
    _run_bad(tmp_path, tokenizer_path, [tmp_path / "j.jsonl"], r"j\.jsonl line 2: not valid JSON")


def test_tokenizer_without_mask_is_refused(tmp_path, tokenizer_path):
    data = json.loads(tokenizer_path.read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "[MASK]"]
    del data["model"]["vocab"]["[MASK]"]
    bad = tmp_path / "nomask.json"
    bad.write_text(json.dumps(data))
    src = write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}])
    out = tmp_path / "bad.zarr"
    with pytest.raises(UsageError, match=r"nomask\.json.*\[MASK\]"):
        preprocess(IngestConfig(inputs=[str(src)], output=str(out), tokenizer=str(bad)))
    _assert_nothing_left(tmp_path, out)


def test_interrupt_leaves_no_store(tmp_path, tokenizer_path, monkeypatch):
    calls = []
    real = ingest._encode

    def encode_then_interrupt(batch):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(batch)

    monkeypatch.setattr(ingest, "_encode", encode_then_interrupt)
    src = write_jsonl(tmp_path / "x.jsonl", [{"text": "abc"}] * 100)
    out = tmp_path / "bad.zarr"
    with pytest.raises(KeyboardInterrupt):
        preprocess(IngestConfig(inputs=[str(src)], output=str(out), tokenizer=str(tokenizer_path), batch_size=10))
    _assert_nothing_left(tmp_path, out)


def test_existing_output_needs_overwrite(tmp_path, tokenizer_path):
    src = write_jsonl(tmp_path / "x.jsonl", [{"text": "abc"}])
    out = tmp_path / "o.zarr"
    cfg = IngestConfig(inputs=[str(src)], output=str(out), tokenizer=str(tokenizer_path))
    preprocess(cfg)
    with pytest.raises(UsageError, match="exists"):
        preprocess(cfg)
    cfg.overwrite = True
    first = TokenStore(out).store_id
    preprocess(cfg)
    assert TokenStore(out).store_id != first


def test_tools_preprocess_data(tmp_path, tokenizer_path):
    from tools.preprocess_data import main as tool_main

    src = write_jsonl(tmp_path / "x.jsonl", [{"q": "a", "r": "b"}] * 3)
    assert tool_main(["--input", str(src), "--output-prefix", str(tmp_path / "p"),
                      "--tokenizer-model", str(tokenizer_path), "--json-keys", "q", "r"]) == 0
    assert TokenStore(tmp_path / "p.zarr").mode == "sft"
    assert tool_main(["--input", str(src), "--output-prefix", str(tmp_path / "q"),
                      "--tokenizer-model", str(tokenizer_path), "--json-keys", "text"]) == 2
