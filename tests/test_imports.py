"""The package reads in pipeline order: no import cycle, no import from a later level.

Every ``import``/``from ... import`` of the package is read from the source (module level and
inside functions alike: a function-level import is still a dependency). Each top-level
subpackage is one level of that order ("level", so as not to be confused with the curriculum's
stages or megatron's pipeline stages). Levels, earliest first:

    base (errors, fileio, progress, layout, batch, parallel) -> data -> corruption -> masks -> model
    -> loss -> distill -> config (the run config) -> training -> sampling -> convert -> loading
    -> evaluation -> onpolicy -> cli

A module may import its own level and earlier ones. The entry points (``cli/``, one module per
command) are the last level: they wire the others together, and nothing else imports them.
"""

import ast
from collections import defaultdict
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "megatron_diffusion"
LEVELS = ["base", "data", "corruption", "masks", "model", "loss", "distill", "config", "training",
          "sampling", "convert", "loading", "evaluation", "onpolicy", "cli"]
BASE = {"errors", "fileio", "progress", "layout", "batch", "parallel", ""}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: dict) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
    return {t for t in found if t in known and t != name}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _level(module: str) -> str:
    parts = module.split(".")[1:]
    top = parts[0] if parts else ""
    return "base" if top in BASE else top


def _violation(src: str, dst: str) -> str | None:
    s, d = _level(src), _level(dst)
    if LEVELS.index(d) > LEVELS.index(s):
        return f"level {s} imports the later level {d}"
    return None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_level():
    unknown = {_level(m) for m in _modules()} - set(LEVELS)
    assert not unknown, f"modules outside the pipeline's levels: {sorted(unknown)}"


def test_no_import_from_a_later_level():
    bad = [f"{src} -> {dst}: {why}" for src, dsts in sorted(_graph().items()) for dst in sorted(dsts)
           if (why := _violation(src, dst))]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = defaultdict(set, _graph())
    # a package's __init__ that imports its submodules is not a cycle with them
    for name in list(graph):
        graph[name] = {d for d in graph[name] if not d.startswith(name + ".")}
    assert _cycles(graph) == []


def test_the_checker_sees_a_later_level_import_and_a_cycle():
    assert _violation("megatron_diffusion.data.loader", "megatron_diffusion.training.trainer")
    assert _violation("megatron_diffusion.training.trainer", "megatron_diffusion.cli.train")
    assert not _violation("megatron_diffusion.cli.train", "megatron_diffusion.onpolicy.trainer")
    assert _violation("megatron_diffusion.sampling.api", "megatron_diffusion.evaluation.generation")
    assert _violation("megatron_diffusion.model.loading", "megatron_diffusion.convert.hf_export")
    assert not _violation("megatron_diffusion.training.trainer", "megatron_diffusion.model.gpt")
    assert _violation("megatron_diffusion.data.loader", "megatron_diffusion.distill.store")
    assert not _violation("megatron_diffusion.training.trainer", "megatron_diffusion.distill.store")
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
