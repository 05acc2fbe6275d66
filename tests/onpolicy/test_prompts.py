"""The prompt-set file (onpolicy/prompts.py): round trip, HumanEval export, one-line errors."""

import json

import pytest

from megatron_diffusion.errors import UsageError
from megatron_diffusion.onpolicy.prompts import (
    PromptRecord, read_prompts, source_records, write_humaneval_prompts, write_prompts,
)


def test_round_trip_and_defaults(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"prompt": "def f():\n", "test": "def check(c):\n    pass\n",
                                "entry_point": "f", "task_id": "t/0"}) + "\n\n"
                    + json.dumps({"prompt": "# no tests here\n"}) + "\n")
    first, second = read_prompts(path)
    assert first == PromptRecord("def f():\n", "t/0", "def check(c):\n    pass\n", "f") and first.has_test
    assert second.task_id == f"{path}:3" and not second.has_test  # blank line 2 skipped
    again = tmp_path / "again.jsonl"
    write_prompts(again, [first, second])
    assert read_prompts(again) == [first, PromptRecord("# no tests here\n", f"{path}:3")]


def test_humaneval_prompts_are_a_real_set(tmp_path):
    path = tmp_path / "humaneval.jsonl"
    written = write_humaneval_prompts(path, limit=3)
    records = read_prompts(path)
    assert records == written and [r.task_id for r in records] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert records[0].entry_point == "has_close_elements" and "def check(candidate)" in records[0].test


@pytest.mark.parametrize("line,match", [
    ('{"prompt": "x"', r"set.jsonl:2: not valid JSON"),
    ('["prompt"]', r"set.jsonl:2: got a JSON list"),
    ('{"test": "t", "entry_point": "f"}', r"set.jsonl:2: field 'prompt': got missing"),
    ('{"prompt": ""}', r"set.jsonl:2: field 'prompt': got str ''"),
    ('{"prompt": 3}', r"set.jsonl:2: field 'prompt': got int 3"),
    ('{"prompt": "x", "test": ["a"], "entry_point": "f"}', r"set.jsonl:2: field 'test': got list"),
    ('{"prompt": "x", "test": "t"}', r"set.jsonl:2: field 'entry_point': missing"),
    ('{"prompt": "x", "entry_point": "f"}', r"set.jsonl:2: field 'test': missing"),
    ('{"prompt": "x", "tests": "t"}', r"set.jsonl:2: unknown field 'tests'"),
    ('{"prompt": "x", "task_id": 5}', r"set.jsonl:2: field 'task_id': got int"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, line, match):
    path = tmp_path / "set.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(UsageError, match=match) as info:
        read_prompts(path)
    assert "\n" not in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(UsageError, match="is not a file"):
        read_prompts(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(UsageError, match="has no records"):
        read_prompts(tmp_path / "empty.jsonl")
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe{}\n")
    with pytest.raises(UsageError, match="not UTF-8"):
        read_prompts(tmp_path / "binary.jsonl")


SOURCE = '''"""A module."""


def documented(a,
               b=1):
    """Add two numbers.

    More text that is not kept.
    """
    return a + b


def undocumented(x):
    return x


class Skipped:
    def method(self):
        """Methods are not top-level functions."""


async def waits(t):
    """Wait ``t`` seconds."""


def long_one(x):
    """''' + "word " * 60 + '''"""
'''


def test_source_prompts_are_signature_and_first_docstring_line(tmp_path):
    f = tmp_path / "mod.py"
    f.write_text(SOURCE)
    records = source_records([f], limit=10, max_chars=200)
    assert [r.prompt for r in records] == [
        'def documented(a,\n               b=1):\n    """Add two numbers.\n',
        'async def waits(t):\n    """Wait ``t`` seconds.\n']
    assert [r.task_id for r in records] == ["mod.py:4", "mod.py:22"]
    assert not any(r.has_test for r in records)
    assert len(source_records([f], limit=1)) == 1
    assert len(source_records([f], limit=10, max_chars=10_000)) == 3  # the long one too


def test_source_prompts_refuse_a_file_that_is_not_python(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n")
    with pytest.raises(UsageError, match="bad.py: not Python source"):
        source_records([bad], limit=5)
