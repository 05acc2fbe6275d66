"""Docstrings say what a reader needs where they read it, and the rest lives in docs/.

A module docstring names the algorithm, the paper section and where the docs are (STYLE.md 8),
so it stays short; every config dataclass says what it configures; code never cites an issue
number, which a reader of the code cannot look up.
"""

import ast
import re

from tests.helpers import ROOT

PACKAGE = ROOT / "megatron_diffusion"
MAX_MODULE_DOCSTRING_LINES = 20

ISSUE_NUMBER = re.compile(r"\bissues? #?\d+", re.IGNORECASE)


def _sources(*folders: str) -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text()
            for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))}


def _docstring_lines(source: str) -> int:
    doc = ast.get_docstring(ast.parse(source), clean=False)
    return 0 if doc is None else len(doc.strip("\n").splitlines())


def _long_module_docstrings(sources: dict[str, str]) -> list[str]:
    return [f"{path}: {n} lines" for path, source in sources.items()
            if (n := _docstring_lines(source)) > MAX_MODULE_DOCSTRING_LINES]


def _undocumented_configs(sources: dict[str, str]) -> list[str]:
    out = []
    for path, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.ClassDef) and node.name.endswith("Config")
                    and any("dataclass" in ast.unparse(d) for d in node.decorator_list)
                    and ast.get_docstring(node) is None):
                out.append(f"{path}: {node.name}")
    return out


def _issue_citations(sources: dict[str, str]) -> list[str]:
    return [f"{path}:{i}: {line.strip()}" for path, source in sources.items()
            for i, line in enumerate(source.splitlines(), 1) if ISSUE_NUMBER.search(line)]


def test_module_docstrings_are_short():
    long = _long_module_docstrings(_sources("megatron_diffusion"))
    assert not long, (f"module docstrings over {MAX_MODULE_DOCSTRING_LINES} lines (keep the "
                      "algorithm, the paper section and where the docs are; move the rest to "
                      "docs/):\n" + "\n".join(long))


def test_every_config_dataclass_has_a_docstring():
    missing = _undocumented_configs(_sources("megatron_diffusion"))
    assert not missing, "config dataclasses without a class docstring:\n" + "\n".join(missing)


def test_code_cites_no_issue_numbers():
    cited = _issue_citations(_sources("megatron_diffusion", "tools"))
    assert not cited, "say what the thing is instead of citing an issue:\n" + "\n".join(cited)


def test_the_checks_see_what_they_look_for():
    long_doc = '"""' + "line\n" * (MAX_MODULE_DOCSTRING_LINES + 1) + '"""\n'
    assert _long_module_docstrings({"m.py": long_doc}) == ["m.py: 21 lines"]
    assert _long_module_docstrings({"m.py": '"""One line."""\n'}) == []
    bare = "from dataclasses import dataclass\n@dataclass\nclass XConfig:\n    a: int = 1\n"
    assert _undocumented_configs({"m.py": bare}) == ["m.py: XConfig"]
    assert _undocumented_configs({"m.py": bare.replace("    a:", '    """X."""\n    a:')}) == []
    cited = "x = 1  # see issue 12\n"
    assert _issue_citations({"m.py": cited}) == ["m.py:1: x = 1  # see issue 12"]
    assert _issue_citations({"m.py": "x = 1  # an issue with 12 rows\n"}) == []
