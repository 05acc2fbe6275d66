"""The store completes and checks the run's vocabulary (``data/vocab.py``)."""

import pytest

from megatron_diffusion.config import RunConfig
from megatron_diffusion.data.vocab import resolve_vocab, store_vocabulary
from megatron_diffusion.errors import UsageError
from tests.helpers import make_tokenizer


def _cfg(store, **model) -> RunConfig:
    cfg = RunConfig()
    cfg.data.blend = [[1.0, str(store)]]
    for name, value in model.items():
        setattr(cfg.model, name, value)
    return cfg


def test_unset_vocabulary_comes_from_the_store(tiny_store):
    cfg = _cfg(tiny_store, vocab_size=0, mask_token_id=-1)
    store = resolve_vocab(cfg)[0]
    assert (cfg.model.vocab_size, cfg.model.mask_token_id) == (store.vocab_size, store.mask_id)
    assert store_vocabulary(store) == {"vocab_size": store.vocab_size,
                                       "special_ids": {store.eos_id, store.mask_id, store.pad_id}}


def test_another_vocabulary_is_refused_by_name(tiny_store):
    with pytest.raises(UsageError, match=r"model.mask_token_id: config says 7 but store .*s.zarr"):
        resolve_vocab(_cfg(tiny_store, vocab_size=0, mask_token_id=7))


def test_training_tokenizer_must_be_the_stores(tiny_store, tmp_path):
    cfg = _cfg(tiny_store)
    cfg.training.tokenizer = str(tiny_store.parent / "tokenizer.json")
    resolve_vocab(cfg)  # the one the store was made with
    cfg.training.tokenizer = str(make_tokenizer(tmp_path / "other.json", 280))
    with pytest.raises(UsageError, match="training.tokenizer: .*other.json is not the tokenizer"):
        resolve_vocab(cfg)
    cfg.training.tokenizer = str(tmp_path / "missing.json")
    with pytest.raises(UsageError, match="training.tokenizer: cannot read"):
        resolve_vocab(cfg)
