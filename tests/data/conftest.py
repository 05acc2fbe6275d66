"""Shared fixtures: a tokenizer trained on a slice of this interpreter's stdlib, small stores."""

import json
import random
import sysconfig
from pathlib import Path

import pytest

from megatron_diffusion.data.ingest import IngestConfig, preprocess
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
