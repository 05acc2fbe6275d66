import itertools
import random

import numpy as np
import pytest
import torch

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.data.config import DataConfig, parse_data_path
from megatron_diffusion.data.index import BlendIndex, cache_root
from megatron_diffusion.data.loader import DiffusionDataLoader, PackedDataset, build_indices
from megatron_diffusion.data.store import TokenStore
from megatron_diffusion.data.tokenizer import load_tokenizer
from megatron_diffusion.errors import UsageError
from tests.data.conftest import make_store

L = 32


def _cfg(store, **kw) -> DataConfig:
    base = dict(blend=[(1.0, str(store))], seq_len=L, micro_batch_size=2, global_batch_size=4,
                num_workers=0, seed=3)
    return DataConfig(**{**base, **kw})


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def fake_corrupt(tokens_BL, document_ids_BL, *, step, generator, prompt_mask_BL=None):
    """Masks positions with a coin from ``generator``; records the step in ``t_BN``."""
    masked = torch.rand(tokens_BL.shape, generator=generator) < 0.5
    if prompt_mask_BL is not None:
        masked &= ~prompt_mask_BL
    return DiffusionBatch(
        tokens_BS=torch.where(masked, torch.full_like(tokens_BL, 1), tokens_BL), labels_BL=tokens_BL,
        loss_weights_BL=masked.float(), document_ids_BL=document_ids_BL, loss_mask_BL=masked,
        t_BN=torch.full((tokens_BL.shape[0], 1), float(step)), num_edits_B=torch.zeros(1, dtype=torch.long))


def _assert_same(a, b):
    for name in ("tokens_BS", "labels_BL", "loss_weights_BL", "document_ids_BL", "t_BN"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_rows_are_packed_documents(cpt_store, tokenizer_path):
    eos = load_tokenizer(tokenizer_path).eos_id
    ds = PackedDataset(_cfg(cpt_store))
    for g in range(ds.samples_per_epoch):
        row = ds[g]
        tok, doc = row.tokens_BL[0], row.document_ids_BL[0]
        assert tok.shape == (L,) and doc[0] == 0
        step = doc[1:] - doc[:-1]
        assert set(step.tolist()) <= {0, 1}
        # CPT documents hold exactly one EOS, at their end: a new document starts right after it
        assert torch.equal(tok[:-1] == eos, step == 1)
        assert not row.prompt_mask_BL.any()


def test_epoch_covers_the_split_in_plan_order(cpt_store):
    """Rows of an epoch, put back in stream order, are the train documents end to end."""
    store = TokenStore(cpt_store)
    ds = PackedDataset(_cfg(cpt_store))
    plan = ds.samples[0].plan(0)
    off = store.read_doc_array("doc_offsets")
    split = store.read_doc_array("split")
    assert sorted(plan.docs.tolist()) == np.flatnonzero(split == 0).tolist()
    stream = np.concatenate([store.read_tokens(off[d], off[d + 1]) for d in plan.docs])
    n = ds.samples_per_epoch
    assert n == len(stream) // L
    rows = np.stack([ds[g].tokens_BL[0].numpy() for g in range(n)])
    np.testing.assert_array_equal(rows[np.argsort(plan.rows)].ravel(), stream[: n * L])
    # epoch 1 is another shuffle of the same rows' documents
    assert not np.array_equal(ds.samples[0].plan(1).docs, plan.docs)
    assert sorted(ds.samples[0].plan(1).docs.tolist()) == sorted(plan.docs.tolist())


def test_same_seed_same_batches_other_seed_other(cpt_store):
    a = _take(DiffusionDataLoader(_cfg(cpt_store)), 5)
    b = _take(DiffusionDataLoader(_cfg(cpt_store)), 5)
    c = _take(DiffusionDataLoader(_cfg(cpt_store, seed=4)), 5)
    assert all(torch.equal(x.tokens_BL, y.tokens_BL) for x, y in zip(a, b))
    assert not all(torch.equal(x.tokens_BL, y.tokens_BL) for x, y in zip(a, c))


def test_dp_shards_disjoint_and_complete(cpt_store):
    cfg = _cfg(cpt_store, micro_batch_size=2, global_batch_size=8)
    single = PackedDataset(cfg)
    seen = {}
    for rank in range(2):
        for b in _take(DiffusionDataLoader(cfg, data_parallel_rank=rank, data_parallel_size=2), 6):
            assert torch.equal(b.step_B, b.sample_index_B // 8)
            for g, tok in zip(b.sample_index_B.tolist(), b.tokens_BL):
                assert g not in seen
                seen[g] = tok
                assert torch.equal(tok, single[g].tokens_BL[0])
    assert sorted(seen) == list(range(24))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_continues_exactly(cpt_store, workers):
    cfg = _cfg(cpt_store, num_workers=workers)
    reference = _take(DiffusionDataLoader(_cfg(cpt_store), corrupt_fn=fake_corrupt), 9)
    loader = DiffusionDataLoader(cfg, corrupt_fn=fake_corrupt)
    first = _take(loader, 4)
    state = loader.state_dict()
    assert state["consumed_samples"] == 8
    resumed = DiffusionDataLoader(cfg, corrupt_fn=fake_corrupt)
    resumed.load_state_dict(state)
    rest = _take(resumed, 5)
    for got, want in zip(first + rest, reference):
        _assert_same(got, want)
    assert [float(b.t_BN[0]) for b in rest] == [4 // 2, 5 // 2, 6 // 2, 7 // 2, 8 // 2]


def test_resume_across_epoch_boundary(cpt_store):
    cfg = _cfg(cpt_store)
    loader = DiffusionDataLoader(cfg)
    per_epoch = loader.samples_per_epoch
    loader.load_state_dict({**loader.state_dict(), "consumed_samples": (per_epoch // 2) * 2})
    batches = _take(loader, 4)
    assert loader.epoch == 1 and loader.state_dict()["epoch"] == 1
    ds = PackedDataset(cfg)
    for b in batches:
        for g, tok in zip(b.sample_index_B.tolist(), b.tokens_BL):
            assert torch.equal(tok, ds[g].tokens_BL[0])


def test_build_indices_ahead(cpt_store, tmp_path):
    cfg = _cfg(cpt_store, index_cache_dir=str(tmp_path / "cache"))
    per_epoch = PackedDataset(cfg).samples_per_epoch
    assert build_indices(cfg, 2 * per_epoch + 1) == 3
    root = cache_root(TokenStore(cpt_store), cfg.index_cache_dir) / "seed3-L32-train-cpt"
    assert sorted(p.name for p in root.iterdir()) == ["epoch0", "epoch1", "epoch2"]


def test_state_from_another_blend_is_refused(cpt_store, sft_store):
    state = DiffusionDataLoader(_cfg(cpt_store)).state_dict()
    other = DiffusionDataLoader(_cfg(cpt_store, seed=9))
    with pytest.raises(UsageError, match="seed was 3"):
        other.load_state_dict(state)
    mixed = DiffusionDataLoader(_cfg(cpt_store, blend=[(1.0, str(cpt_store)), (1.0, str(sft_store))]))
    with pytest.raises(UsageError, match="weights was"):
        mixed.load_state_dict(state)


def test_sft_prompt_mask_and_eos_runs(sft_store, sft_records, tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    pairs = {(r["prompt"], r["response"]) for r in sft_records}
    ds = PackedDataset(_cfg(sft_store, mode="sft", seq_len=64))
    eos_runs, num_full = [], 0
    for g in range(ds.samples_per_epoch):
        row = ds[g]
        tokens, doc, pm = row.tokens_BL[0], row.document_ids_BL[0], row.prompt_mask_BL[0]
        for d in doc.unique().tolist()[1:-1]:  # documents wholly inside the row
            sel = doc == d
            t, p = tokens[sel], pm[sel]
            n_prompt = int(p.sum())
            assert p[:n_prompt].all()                         # the prompt is a prefix
            n_eos = int((t == tok.eos_id).sum())
            assert (t[len(t) - n_eos:] == tok.eos_id).all()   # EOS only at the end
            eos_runs.append(n_eos)
            assert (tok.decode(t[:n_prompt]), tok.decode(t[n_prompt:len(t) - n_eos])) in pairs
            num_full += 1
    assert num_full > 50
    assert set(eos_runs) == {1, 2, 3, 4}
    # CPT mode on an SFT store: no prompt mask, no extra EOS
    cpt = PackedDataset(_cfg(sft_store, mode="cpt", seq_len=64))
    assert not any(cpt[g].prompt_mask_BL.any() for g in range(5))


def test_sft_mode_needs_sft_store(cpt_store):
    with pytest.raises(UsageError, match="data.mode 'sft' needs"):
        PackedDataset(_cfg(cpt_store, mode="sft"))


def test_corrupt_fn_gets_prompt_mask_in_sft(sft_store):
    loader = DiffusionDataLoader(_cfg(sft_store, mode="sft", seq_len=64), corrupt_fn=fake_corrupt)
    ds = PackedDataset(_cfg(sft_store, mode="sft", seq_len=64))
    b = _take(loader, 1)[0]
    pm = torch.cat([ds[g].prompt_mask_BL for g in (0, 1)])
    assert pm.any() and not b.loss_mask_BL[pm].any()


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory, tokenizer_path):
    tmp = tmp_path_factory.mktemp("blend")
    rng = random.Random(5)
    a = make_store(tmp, tokenizer_path, [{"text": " alpha" * rng.randint(3, 20)} for _ in range(300)], "a")
    b = make_store(tmp, tokenizer_path, [{"text": " omega" * rng.randint(3, 20)} for _ in range(300)], "b")
    return a, b


def test_blend_weights_respected(two_stores, tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    a, b = two_stores
    cfg = _cfg(a, blend=[(3.0, str(a)), (1.0, str(b))], micro_batch_size=4, global_batch_size=4)
    batches = _take(DiffusionDataLoader(cfg), 50)
    texts = [tok.decode(t) for bt in batches for t in bt.tokens_BL]
    from_b = ["omega" in t for t in texts]
    assert not any("omega" in t and "alpha" in t for t in texts)
    assert abs(np.mean(from_b) - 0.25) < 0.03
    ds = PackedDataset(cfg)
    assert abs(ds.blend.counts[0] - 3 * ds.blend.counts[1]) <= 3
    rows = [ss.plan(0).num_rows for ss in ds.samples]
    assert ds.blend.size == int(min(rows[0] / 0.75, rows[1] / 0.25))  # the first store to run out


def test_blend_index_prefixes_track_weights(tmp_path):
    rows, weights = [1000, 50, 700], [0.5, 0.1, 0.4]
    blend = BlendIndex(rows, weights, tmp_path / "blend")
    assert blend.size == 500 and blend.counts.tolist() == [250, 50, 200]  # store 1 limits it
    ds = np.asarray(blend.dataset_index)
    counts = np.stack([np.cumsum(ds == i) for i in range(3)], axis=1)
    ideal = np.arange(1, blend.size + 1)[:, None] * np.asarray(weights)[None]
    assert np.abs(counts - ideal).max() <= 1.0
    for i in range(3):  # each store's rows in order, each once per blended epoch
        assert np.array_equal(np.asarray(blend.dataset_sample_index)[ds == i], np.arange(blend.counts[i]))
    # the next blended epoch continues each store where it stopped
    assert blend.locate(blend.size + int(np.argmax(ds == 1))) == (1, 50)
    again = BlendIndex(rows, weights, tmp_path / "blend")  # loaded from the cache
    assert np.array_equal(again.dataset_index, ds)


def test_parse_data_path_and_config_errors():
    assert parse_data_path(["a"]) == [(1.0, "a")]
    assert parse_data_path(["0.7", "a", "0.3", "b"]) == [(0.7, "a"), (0.3, "b")]
    with pytest.raises(UsageError, match="weight 'x'"):
        parse_data_path(["x", "a", "0.3", "b"])
    with pytest.raises(UsageError, match="data.mode"):
        DataConfig(blend=[(1.0, "a")], mode="ar").validate()
    with pytest.raises(UsageError, match="global_batch_size"):
        DataConfig(blend=[(1.0, "a")], micro_batch_size=2, global_batch_size=6).check_data_parallel(2)


def test_store_compatibility(cpt_store, tokenizer_path):
    store = TokenStore(cpt_store)
    tok = load_tokenizer(tokenizer_path)
    store.check_compatible(tok.vocab_size, tok.hash)
    with pytest.raises(UsageError, match=rf"store .*cpt.*vocab_size is {tok.vocab_size}, expected 999"):
        store.check_compatible(vocab_size=999)
    with pytest.raises(UsageError, match="tokenizer_hash"):
        store.check_compatible(tokenizer_hash="0" * 64)
    with pytest.raises(UsageError, match="tokenizer_hash"):
        DiffusionDataLoader(_cfg(cpt_store), tokenizer_hash="0" * 64)
    with pytest.raises(UsageError, match="no such directory"):
        TokenStore(cpt_store.parent / "absent.zarr")


class _Refusing(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise UsageError("store x.zarr: chunk 3 fails its checksum")


def test_a_workers_usage_error_is_its_own_line():
    """torch re-raises a worker's exception with the traceback in front and the class's
    qualified name on its last line; the loader reports the message alone."""
    from megatron_diffusion.data.loader import _worker_message

    with pytest.raises(UsageError) as caught:
        next(iter(torch.utils.data.DataLoader(_Refusing(), num_workers=1)))
    assert _worker_message(str(caught.value)) == "store x.zarr: chunk 3 fails its checksum"
