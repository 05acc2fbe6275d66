"""``megatron-diffusion lm-eval``: arguments reach lm-eval verbatim; without the extra, one line."""

import sys

from megatron_diffusion.cli import main


def test_without_the_extra_it_is_one_line_naming_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now fails, as when absent
    for name in [m for m in sys.modules if m.startswith("lm_eval.")] + [
            "megatron_diffusion.evaluation.lm_eval_model"]:
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert main(["lm-eval", "--model", "megatron_diffusion", "--tasks", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["megatron-diffusion lm-eval: error: lm-eval: lm-evaluation-harness is not "
                   "installed; pip install 'megatron-diffusion[lmeval]'"]


def test_its_arguments_go_to_lm_eval_in_order(monkeypatch):
    import types

    seen = []
    fake = types.ModuleType("megatron_diffusion.evaluation.lm_eval_model")
    fake.harness_main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "megatron_diffusion.evaluation.lm_eval_model", fake)
    argv = ["--model", "megatron_diffusion", "--model_args", "checkpoint=d,strategy=ar",
            "--tasks", "a,b", "-b", "2", "run"]
    assert main(["lm-eval", *argv]) == 0
    assert seen == [argv]


def test_lm_eval_is_imported_in_one_module_only():
    import ast

    from tests.helpers import ROOT

    importers = set()
    for path in (ROOT / "megatron_diffusion").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "lm_eval" or n.startswith("lm_eval.") for n in names):
                importers.add(path.relative_to(ROOT).as_posix())
    assert importers == {"megatron_diffusion/evaluation/lm_eval_model.py"}
