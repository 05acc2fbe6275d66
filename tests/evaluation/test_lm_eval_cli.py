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
