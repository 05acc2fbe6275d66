"""Corrupt checkpoints: a truncated or deleted shard, a truncated meta.json, garbage in latest.

Before the fix each was a raw traceback (``unexpected pos``, ``JSONDecodeError``, ...) and
``--resume auto`` never looked past the newest checkpoint. Now a bad checkpoint is one line
naming the file; ``--resume auto`` says so and falls back to the newest one that loads.
"""

import shutil

import pytest

from tests.faults.conftest import run_cli
from tests.training.conftest import losses

SAVES = ["training.save_interval=2", "training.keep_last=2"]


@pytest.fixture(scope="module")
def source_run(tiny_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt_src") / "run"
    run_cli(tiny_store, run, "training.train_iters=4", *SAVES)
    return run


@pytest.fixture
def run(source_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(source_run, dst)
    return dst


def _newest_shard(run):
    return sorted((run / "checkpoints" / "iter_0000004" / "model_optim").glob("*.distcp"))[0]


def _resume_falls_back(tiny_store, run, *needles):
    proc = run_cli(tiny_store, run, "training.train_iters=6", *SAVES)
    out = proc.stdout + proc.stderr
    for needle in needles:
        assert needle in out, out[-3000:]
    assert "falling back" in out and "iter_0000002" in out, out[-3000:]
    assert sorted(losses(run)) == [1, 2, 3, 4, 5, 6]  # resumed at 2: steps 3-4 redone
    assert (run / "checkpoints" / "latest").read_text().strip() == "iter_0000006"


def test_truncated_shard_falls_back_to_the_previous_checkpoint(tiny_store, run):
    shard = _newest_shard(run)
    shard.write_bytes(shard.read_bytes()[:1000])
    _resume_falls_back(tiny_store, run, shard.name, "truncated")


def test_deleted_shard_falls_back(tiny_store, run):
    shard = _newest_shard(run)
    shard.unlink()
    _resume_falls_back(tiny_store, run, shard.name, "missing")


def test_flipped_shard_bytes_fall_back(tiny_store, run):
    """64 flipped bytes, same size: loaded silently before (loss +1 nat after the resume); the
    checkpoint's checksums.json catches them and --resume auto takes the previous one."""
    shard = _newest_shard(run)
    data = bytearray(shard.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    shard.write_bytes(bytes(data))
    _resume_falls_back(tiny_store, run, shard.name, "fails its checksum")


def test_truncated_rng_file_falls_back(tiny_store, run):
    """Before: a one-line error without falling back, so every requeue failed."""
    rng = run / "checkpoints" / "iter_0000004" / "rng" / "rank_00000.pt"
    rng.write_bytes(rng.read_bytes()[:100])
    _resume_falls_back(tiny_store, run, "rng/rank_00000.pt", "truncated")


def test_truncated_meta_json_falls_back(tiny_store, run):
    meta = run / "checkpoints" / "iter_0000004" / "meta.json"
    meta.write_text(meta.read_text()[:50])
    _resume_falls_back(tiny_store, run, "meta.json")


def test_garbage_in_latest_uses_the_newest_complete_checkpoint(tiny_store, run):
    (run / "checkpoints" / "latest").write_bytes(b"\xff\x00garbage")
    proc = run_cli(tiny_store, run, "training.train_iters=6", *SAVES)
    out = proc.stdout + proc.stderr
    assert "latest" in out and "iter_0000004" in out, out[-3000:]
    assert (run / "checkpoints" / "latest").read_text().strip() == "iter_0000006"


def test_explicit_resume_of_a_truncated_checkpoint_is_one_line(tiny_store, run):
    shard = _newest_shard(run)
    shard.write_bytes(shard.read_bytes()[:1000])
    proc = run_cli(tiny_store, run, "training.train_iters=6", *SAVES,
                   resume=str(run / "checkpoints" / "iter_0000004"), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and shard.name in err[0] and "truncated" in err[0], err


def test_no_loadable_checkpoint_is_one_line(tiny_store, run):
    for ckpt in ("iter_0000002", "iter_0000004"):
        (run / "checkpoints" / ckpt / "meta.json").write_text("{")
    proc = run_cli(tiny_store, run, "training.train_iters=6", *SAVES, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no checkpoint" in proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]


def test_a_rank_local_corruption_falls_back_on_every_rank(tiny_store, tmp_path):
    """DP=2: each rank checksums its share of the per-rank files, so only rank 1 sees rank 1's
    corrupted RNG file. The ranks agree on the checkpoint: both fall back to iter 2 (without
    the agreement rank 0 resumed at 4 and rank 1 at 2, and the run hung or diverged)."""
    run = tmp_path / "run"
    run_cli(tiny_store, run, "training.train_iters=4", *SAVES, nproc=2)
    rng = run / "checkpoints" / "iter_0000004" / "rng" / "rank_00001.pt"
    data = bytearray(rng.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rng.write_bytes(bytes(data))
    proc = run_cli(tiny_store, run, "training.train_iters=6", *SAVES, nproc=2)
    out = proc.stdout + proc.stderr
    assert "rng/rank_00001.pt fails its checksum" in out and "falling back" in out, out[-3000:]
    assert sorted(losses(run)) == [1, 2, 3, 4, 5, 6]  # both ranks resumed at 2
    assert (run / "checkpoints" / "latest").read_text().strip() == "iter_0000006"
