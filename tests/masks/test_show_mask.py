"""The show-mask command: JSON equals the dense mask, PNG is written, bad input exits 2."""

import json
import os

import pytest
import torch

from megatron_diffusion.cli import main
from megatron_diffusion.layout import document_ids_from_lengths
from megatron_diffusion.masks import AttentionConfig, attention_allowed


def test_json_is_the_dense_mask(tmp_path):
    out = tmp_path / "m.json"
    rc = main(["show-mask", "--mode", "block", "--seq-len", "8", "--block-size", "2",
               "--doc-lengths", "3,5", "--visibility", "isolated", "--clean-stream", "causal",
               "--format", "json", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["mode"] == "block" and data["seq_len"] == 8 and data["block_size"] == 2
    assert data["visibility"] == "isolated" and data["clean_stream"] == "causal"
    assert data["doc_lengths"] == [3, 5]
    expected = attention_allowed(AttentionConfig("block", 2, "isolated", "causal"),
                                 document_ids_from_lengths([3, 5]).unsqueeze(0))[0]
    assert torch.equal(torch.tensor(data["mask"]), expected)
    assert len(data["mask"]) == 16


def test_json_causal_single_document(tmp_path):
    out = tmp_path / "c.json"
    assert main(["show-mask", "--mode", "causal", "--seq-len", "4", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["mask"] == [[True, False, False, False], [True, True, False, False],
                            [True, True, True, False], [True, True, True, True]]
    assert "block_size" not in data and data["doc_lengths"] == [4]


@pytest.mark.parametrize("mode", ["block", "bidirectional"])
def test_png_is_written(tmp_path, mode):
    out = tmp_path / "m.png"
    rc = main(["show-mask", "--mode", mode, "--seq-len", "8", "--block-size", "4",
               "--doc-lengths", "4,4", "--format", "png", "--out", str(out)])
    assert rc == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["m.png"]  # no temporary file left behind


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--mode", "block", "--seq-len", "8", "--block-size", "3"], "--block-size"),
        (["--mode", "block", "--seq-len", "8", "--doc-lengths", "3,4"], "--doc-lengths"),
        (["--mode", "block", "--seq-len", "8", "--doc-lengths", "3,x"], "--doc-lengths"),
        (["--mode", "blocky", "--seq-len", "8"], "--mode"),
        (["--mode", "causal", "--seq-len", "8", "--visibility", "private"], "--visibility"),
        (["--mode", "block", "--seq-len", "8", "--clean-stream", "ar"], "--clean-stream"),
        (["--mode", "causal", "--seq-len", "0"], "--seq-len"),
        (["--mode", "causal", "--seq-len", "8", "--format", "svg"], "--format"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, extra, option):
    out = tmp_path / "m.json"
    rc = main(["show-mask", *extra, "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_unknown_mode_names_allowed_values(tmp_path, capsys):
    assert main(["show-mask", "--mode", "ar", "--seq-len", "8", "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert all(m in err for m in ("'causal'", "'bidirectional'", "'block'"))


def test_missing_output_directory(tmp_path, capsys):
    rc = main(["show-mask", "--mode", "causal", "--seq-len", "4", "--out", str(tmp_path / "no" / "m.json")])
    assert rc == 2 and "--out" in capsys.readouterr().err
