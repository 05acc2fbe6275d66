"""``parallel.context_parallel_size`` at config time: one-line errors before any work."""

import pytest

from megatron_diffusion.config import load_config
from megatron_diffusion.errors import UsageError
from megatron_diffusion.model import backends

BASE = {"model.vocab_size": 300, "model.mask_token_id": 299, "model.num_attention_heads": 4,
        "model.num_query_groups": 2, "model.hidden_size": 64, "attention.mode": "block",
        "attention.block_size": 4, "data.seq_len": 16, "model.max_position_embeddings": 64,
        "data.blend": [[1.0, "store"]]}


def _load(**kw):
    return load_config(overrides={**BASE, **{k.replace("__", "."): v for k, v in kw.items()}})


def test_cp2_loads_and_defaults_to_one():
    assert load_config(overrides=BASE).parallel.context_parallel_size == 1
    assert _load(parallel__context_parallel_size=2).parallel.context_parallel_size == 2


def test_without_deepspeed_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setattr(backends, "have_deepspeed", lambda: False)
    _load()  # CP=1 never needs it
    with pytest.raises(UsageError) as e:
        _load(parallel__context_parallel_size=2)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("parallel.context_parallel_size=2 needs DeepSpeed")
    assert "DS_BUILD_OPS=0 pip install 'megatron-diffusion[deepspeed]'" in msg


@pytest.mark.parametrize("overrides,expected", [
    ({"parallel.context_parallel_size": 0}, "parallel.context_parallel_size: got 0"),
    # 4 query heads / TP 2 = 2 per TP rank: CP 4 cannot split them
    ({"parallel.context_parallel_size": 4, "parallel.tensor_model_parallel_size": 2},
     "parallel.context_parallel_size: 4 must divide the query heads per tensor-parallel rank"),
    ({"parallel.context_parallel_size": 3, "model.num_attention_heads": 6, "model.hidden_size": 96,
      "model.num_query_groups": 6},
     "parallel.context_parallel_size: 3 must divide the 32 model tokens of a row"),
])
def test_bad_sizes_are_one_line_errors(overrides, expected):
    with pytest.raises(UsageError) as e:
        load_config(overrides={**BASE, **overrides})
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)
