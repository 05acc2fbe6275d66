"""``distill-trajectories`` end to end on a tiny checkpoint and store: valid orders, resume, bad input."""

import numpy as np
import pytest
import torch
import zarr

from megatron_diffusion.cli import main
from megatron_diffusion.data.config import DataConfig
from megatron_diffusion.data.loader import DiffusionDataLoader
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.distill.orders import check_step_map
from tests.helpers import make_checkpoint

B, ROWS = 4, 3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    make_checkpoint(run, attention=AttentionConfig(mode="block", block_size=B), num_layers=2)
    return run


def _distill(capsys, run_dir, store, out, *extra):
    code = main(["distill-trajectories", "--checkpoint", str(run_dir), "--data", str(store),
                 "--out", str(out), "--rows", str(ROWS), "--candidates", "2", *extra])
    return code, capsys.readouterr()


def _group(out):
    return zarr.open_group(store=str(out / "rank00000-of-00001.zarr"), mode="r")


def test_every_searched_block_gets_a_valid_best_order(run_dir, tiny_store, tmp_path, capsys):
    code, printed = _distill(capsys, run_dir, tiny_store, tmp_path / "traj", "--exact")
    assert code == 0, printed.err
    assert f"{ROWS} rows done" in printed.out and "forwards" in printed.out
    g = _group(tmp_path / "traj")
    assert g["done"][:].all()
    rows = DiffusionDataLoader(DataConfig(blend=[(1.0, str(tiny_store))], seq_len=32,
                                          num_workers=0, seed=1234))
    for r, packed in zip(range(ROWS), rows):
        assert g["tokens"][r].tolist() == packed.tokens_BL[0].tolist()  # the data, unchanged
        step_map = g["step_map"][r]
        assert (step_map[:B] == -1).all()  # the context block
        for block in step_map[B:].reshape(-1, B):
            check_step_map(torch.as_tensor(block.astype(np.int64)))
    sel, exact = g["elbo_selected"][:], g["elbo_exact"][:]
    assert np.allclose(sel, exact, atol=1e-4)  # --exact keeps the exact best
    search = g["elbo_search"][:]  # the sampled search alone: between left to right and exact
    assert (search >= g["elbo_left_to_right"][:] - 1e-4).all() and (sel >= search - 1e-4).all()
    assert (sel >= g["elbo_random"][:] - 1e-4).all()
    assert g.attrs["candidates"][-2:] == ["left_to_right", "exact"]


def test_a_rerun_resumes_at_the_rows_not_done(run_dir, tiny_store, tmp_path, capsys):
    out = tmp_path / "traj"
    assert _distill(capsys, run_dir, tiny_store, out)[0] == 0
    first = _group(out)["step_map"][:]
    zarr.open_group(store=str(out / "rank00000-of-00001.zarr"), mode="r+")["done"][1] = False
    code, printed = _distill(capsys, run_dir, tiny_store, out)
    assert code == 0 and "(1 this run" in printed.out
    assert (_group(out)["step_map"][:] == first).all()  # seeded per row: the same orders
    code, printed = _distill(capsys, run_dir, tiny_store, out, "--seed", "1")
    assert code == 2 and "other settings" in printed.err and len(printed.err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,match", [
    (["--rows", "0"], "--rows"),
    (["--temperatures", "0.5,x"], "--temperatures"),
    (["--tokens-per-step", "2", "--exact"], "--exact"),
    (["--tokens-per-step", "5"], "more than the block size"),
    (["--context-blocks", "8"], "leave no block"),
])
def test_bad_input_is_one_line_and_writes_nothing(run_dir, tiny_store, tmp_path, capsys, args, match):
    out = tmp_path / "traj"
    code, printed = _distill(capsys, run_dir, tiny_store, out, *args)
    assert code == 2 and match in printed.err
    assert len(printed.err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_store_of_another_tokenizer_is_one_line(run_dir, tmp_path, capsys):
    import sysconfig
    from pathlib import Path

    from megatron_diffusion.data.ingest import IngestConfig, preprocess
    from tests.helpers import make_tokenizer

    tok = make_tokenizer(tmp_path / "other.json", 280)
    store = tmp_path / "other.zarr"
    preprocess(IngestConfig(inputs=[str(Path(sysconfig.get_paths()["stdlib"]) / "json")],
                            output=str(store), tokenizer=str(tok), glob="*.py"))
    capsys.readouterr()  # preprocess's progress
    out = tmp_path / "traj"
    code, printed = _distill(capsys, run_dir, store, out)
    assert code == 2 and "tokenizer_hash" in printed.err
    assert len(printed.err.strip().splitlines()) == 1
    assert not out.exists()
