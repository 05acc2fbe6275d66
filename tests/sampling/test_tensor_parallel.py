"""TP=2 sampling (gloo, two processes) decides exactly what one process decides."""

import json

import pytest

from megatron_diffusion.masks.config import AttentionConfig
from tests.helpers import make_checkpoint, torchrun

pytestmark = pytest.mark.distributed
WORKER = "tests/sampling/tp_worker.py"


def test_tp2_decodes_like_tp1(tmp_path):
    make_checkpoint(tmp_path / "run", attention=AttentionConfig(mode="block", block_size=4),
                    num_layers=2)
    ckpt = str(tmp_path / "run")
    torchrun(WORKER, 1, "--checkpoint", ckpt, "--out", str(tmp_path / "tp1"))
    torchrun(WORKER, 2, "--checkpoint", ckpt, "--tp", "2", "--out", str(tmp_path / "tp2"))
    tp1 = json.loads((tmp_path / "tp1.rank0.json").read_text())
    ranks = [json.loads((tmp_path / f"tp2.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] == tp1
    assert all(len(row) == 12 for rows in tp1.values() for row in rows)
    assert tp1["0.0"] != tp1["1.0"]
