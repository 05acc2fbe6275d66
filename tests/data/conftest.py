"""Shared fixtures: a tokenizer trained on a slice of this interpreter's stdlib, small stores,
Megatron indexed datasets (.bin/.idx) written from a store by megatron-core's builder."""

import json
import random
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_diffusion.data.ingest import IngestConfig, preprocess
from megatron_diffusion.data.store import TokenStore
from megatron_diffusion.data.tokenizer import iter_text_files, train_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
WORDS = ("def return class import self lambda yield async await with open print range "
         "alpha beta gamma delta value index items keys list dict tuple set none true false").split()


def stdlib_slice(n: int = 30) -> list[Path]:
    """The first ``n`` .py files of Lib/json and Lib/email, sorted (deterministic)."""
    files = sorted((STDLIB / "json").rglob("*.py")) + sorted((STDLIB / "email").rglob("*.py"))
    return files[:n]


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    texts = list(iter_text_files([STDLIB / "json", STDLIB / "email"], "*.py"))
    train_tokenizer(texts + [" ".join(WORDS)], vocab_size=600).save(str(path))
    return path


def random_text(rng: random.Random, min_words: int, max_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_store(tmp: Path, tokenizer: Path, records: list[dict], name: str = "s", **kw) -> Path:
    src = write_jsonl(tmp / f"{name}.jsonl", records)
    out = tmp / f"{name}.zarr"
    preprocess(IngestConfig(inputs=[str(src)], output=str(out), tokenizer=str(tokenizer), **kw))
    return out


@pytest.fixture(scope="session")
def cpt_store(tmp_path_factory, tokenizer_path) -> Path:
    """300 documents of 1-60 words (a few longer than a 32-token row), 10% validation."""
    rng = random.Random(0)
    records = [{"text": random_text(rng, 1, 60)} for _ in range(300)]
    return make_store(tmp_path_factory.mktemp("cpt"), tokenizer_path, records,
                      validation_fraction=0.1)


@pytest.fixture(scope="session")
def sft_records() -> list[dict]:
    rng = random.Random(1)
    return [{"prompt": f"Q{i}: " + random_text(rng, 1, 8), "response": f"A{i}: " + random_text(rng, 1, 12)}
            for i in range(200)]


@pytest.fixture(scope="session")
def sft_store(tmp_path_factory, tokenizer_path, sft_records) -> Path:
    return make_store(tmp_path_factory.mktemp("sft"), tokenizer_path, sft_records,
                      prompt_field="prompt", response_field="response", validation_fraction=0.0)


def indexed_builder(prefix, dtype=np.uint16):
    """megatron-core's ``IndexedDatasetBuilder`` writing ``PREFIX.bin`` (``finalize`` the .idx)."""
    with warnings.catch_warnings():  # megatron-core's Apex/TE fallback warnings at import
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    return IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)


def write_indexed_like(store_path, prefix, *, sft=False, dtype=np.uint16):
    """The documents of a zarr store as a Megatron indexed dataset: one sequence per document
    (EOS last, as --append-eod writes it), or prompt and response sequences for SFT."""
    store = TokenStore(store_path)
    off, prompt = store.read_doc_array("doc_offsets"), store.read_doc_array("prompt_lengths")
    builder = indexed_builder(prefix, dtype)
    for d in range(store.num_docs):
        doc = torch.from_numpy(store.read_tokens(int(off[d]), int(off[d + 1])).astype(np.int64))
        for part in (doc[:prompt[d]], doc[prompt[d]:]) if sft else (doc,):
            builder.add_item(part)
        builder.end_document()
    builder.finalize(f"{prefix}.idx")
    return str(prefix)
