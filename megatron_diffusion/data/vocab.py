"""The run's vocabulary comes from its data: the token store completes and checks the config.

A store records the vocabulary it was tokenized with (``vocab_size``, the EOS/[MASK]/pad ids,
the tokenizer's hash). ``resolve_vocab(cfg)`` (``cfg``: a ``config.RunConfig``, read here, not
imported: the run config is a later level) fills ``model.vocab_size`` / ``model.mask_token_id``
where the config leaves them unset (0 / -1), refuses a config that names other values, and
checks ``training.tokenizer`` against the store's hash; ``check_checkpoint_store`` checks a
checkpoint's (``--init-from``, ``--resume``) the same way. ``store_vocabulary(store)`` gives
``corruption.factory.make_corruptor`` the ids its edits may not draw.
"""

from pathlib import Path

from megatron_diffusion.data.loader import open_stores
from megatron_diffusion.data.tokenizer import check_tokenizer_hash, tokenizer_file_hash
from megatron_diffusion.errors import UsageError


def resolve_vocab(cfg):
    """Fill/check the model's vocabulary from the data stores; returns the opened stores."""
    stores = open_stores(cfg.data)
    store = stores[0]
    for name, value in (("vocab_size", store.vocab_size), ("mask_token_id", store.mask_id)):
        mine = getattr(cfg.model, name)
        if mine in (0, -1):
            setattr(cfg.model, name, value)
        elif mine != value:
            raise UsageError(f"model.{name}: config says {mine} but store {store.path} has "
                             f"{value} (tokenized with another vocabulary?)")
    check_run_tokenizer(cfg.training.tokenizer, store)
    return stores


def check_run_tokenizer(path, store) -> None:
    """``training.tokenizer`` (shipped in every checkpoint) must be the store's tokenizer."""
    if path is None:
        return
    check_tokenizer_hash(f"training.tokenizer: {path} is not the tokenizer store {store.path} "
                         "was made with", ("hash", tokenizer_file_hash(path, "training.tokenizer")),
                         ("store", store.tokenizer_hash))


def check_checkpoint_store(meta: dict, checkpoint, store, option: str) -> None:
    """A checkpoint (``meta``: its meta.json) trains only on data of its own tokenizer; one
    from before tokenizer hashes were recorded is not checked."""
    checkpoint = Path(checkpoint)
    check_tokenizer_hash(f"{option}: checkpoint {checkpoint} was trained with another tokenizer "
                         f"than store {store.path} was made with",
                         (f"{checkpoint / 'meta.json'} tokenizer_hash", meta.get("tokenizer_hash")),
                         ("store", store.tokenizer_hash),
                         f"; tokenize the data with {checkpoint / 'tokenizer.json'}")


def store_vocabulary(store) -> dict:
    """``make_corruptor``'s vocabulary arguments from a token store."""
    return {"vocab_size": store.vocab_size, "special_ids": {store.eos_id, store.mask_id, store.pad_id}}
