"""inspect-data writes recomputable corruption records from the real training loader."""

import json

import pytest

from tests.helpers import ROOT
from tests.training.conftest import TINY

CFG = str(ROOT / "examples" / "cpu_demo.yaml")


def _run(capsys, *args):
    from megatron_diffusion.cli import main

    code = main(["inspect-data", "--config", CFG, *args])
    return code, capsys.readouterr().err


def test_block_mode_records(tiny_store, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    code, err = _run(capsys, "--num-batches", "2", "--out", str(out), "--step", "40",
                     f"data.blend=[[1.0, {tiny_store}]]", *TINY, "training.train_iters=100")
    assert code == 0, err
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 4  # 2 micro-batches of 2 rows
    L = 16
    for r in recs:
        assert r["stage"] == "mask" and r["block_size"] == 4 and r["num_edits"] == 0
        assert len(r["input_tokens"]) == 2 * L and r["input_tokens"][L:] == r["clean_tokens"]
        assert len(r["t"]) == L // 4
        mask_id = max(set(r["noisy_tokens"]) - set(r["clean_tokens"]), default=None)
        masked = [i for i, (a, b) in enumerate(zip(r["noisy_tokens"], r["clean_tokens"])) if a != b]
        assert masked == r["loss_positions"]  # mask stage: loss exactly on masked tokens
        for b in range(L // 4):  # block mode: every block has >= 1 masked token
            assert any(b * 4 <= i < b * 4 + 4 for i in masked)
        # ELBO weight 1/u_blk with u_blk = min(1, max(t_b, 1/B)) for the linear schedule
        for i, w in zip(r["loss_positions"], r["loss_weights"]):
            t = r["t"][i // 4]
            assert w == pytest.approx(1 / min(1.0, max(t, 0.25)), rel=1e-5)
        assert mask_id is None or mask_id not in r["clean_tokens"]


def test_edit_stage_records(tiny_store, tmp_path, capsys):
    out = tmp_path / "e.jsonl"
    code, err = _run(capsys, "--out", str(out), "--step", "95", f"data.blend=[[1.0, {tiny_store}]]",
                     *TINY, "training.train_iters=100", "corruption.edit_max_rate=0.25")
    assert code == 0, err
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["stage"] == "edit" for r in recs)
    assert all(len(r["loss_positions"]) == 16 for r in recs)  # loss on every position
    assert sum(r["num_edits"] for r in recs) > 0


def test_bad_step(tiny_store, tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    code, err = _run(capsys, "--out", str(out), "--step", "500", f"data.blend=[[1.0, {tiny_store}]]",
                     *TINY, "training.train_iters=100")
    assert code == 2 and "--step" in err and not out.exists()
