"""Training on a Megatron indexed dataset (.bin/.idx): the losses of the zarr store of the same
tokens, bit for bit, straight and across a resume; the checkpoint ships data.tokenizer."""

import sysconfig
from pathlib import Path

import pytest

from megatron_diffusion.data.tokenizer import tokenizer_file_hash
from tests.data.conftest import write_indexed_like
from tests.helpers import make_tokenizer
from tests.training.conftest import losses, run_train

pytestmark = pytest.mark.slow
STEPS = 4


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    from megatron_diffusion.data.ingest import IngestConfig, preprocess

    d = tmp_path_factory.mktemp("twins")
    tok = make_tokenizer(d / "tokenizer.json", 300)
    lib = Path(sysconfig.get_paths()["stdlib"])
    preprocess(IngestConfig(inputs=[str(lib / "json")], output=str(d / "s.zarr"), tokenizer=str(tok),
                            glob="*.py", validation_fraction=0.0))
    return d / "s.zarr", write_indexed_like(d / "s.zarr", d / "json_text_document"), tok


def test_indexed_training_matches_zarr_and_resumes_exactly(twins, tmp_path):
    zarr_store, prefix, tok = twins
    run_train(zarr_store, tmp_path / "zarr", f"training.train_iters={STEPS}")
    run = tmp_path / "indexed"
    args = (f"training.train_iters={STEPS}", f"data.tokenizer={tok}")
    run_train(prefix, run, *args, f"training.exit_interval={STEPS // 2}")
    assert max(losses(run)) == STEPS // 2
    run_train(prefix, run, *args)
    assert losses(run) == losses(tmp_path / "zarr")  # identical floats
    shipped = sorted(run.glob("checkpoints/iter_*/tokenizer.json"))
    assert shipped and tokenizer_file_hash(shipped[-1], "test") == tokenizer_file_hash(tok, "test")


@pytest.mark.distributed
def test_indexed_training_dp2_matches_one_process(twins, tmp_path):
    """DP=2 (rank 0 builds the indices from the .idx, both ranks read their shards) trains the
    losses of one process, as it does on a zarr store."""
    _, prefix, tok = twins
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_train(prefix, ref, "training.train_iters=3", f"data.tokenizer={tok}")
    run_train(prefix, run, "training.train_iters=3", f"data.tokenizer={tok}", nproc=2)
    a, b = losses(ref), losses(run)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-4, (step, a[step], b[step])
