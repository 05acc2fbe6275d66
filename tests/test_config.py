"""The run config's validation contract: one ``validate`` signature, cross-section checks at load.

Every config section's ``validate(self) -> Self`` takes no arguments and returns the section;
checks that need two sections run in ``RunConfig.validate``, so a bad combination fails when the
config is loaded (one line naming the field), not in the middle of a forward pass.
"""

import ast
import inspect

import pytest

from megatron_diffusion.config import RunConfig, load_config
from megatron_diffusion.errors import UsageError
from tests.helpers import ROOT

BASE = {"model.vocab_size": 300, "model.mask_token_id": 299, "model.num_attention_heads": 4,
        "model.num_query_groups": 2, "model.hidden_size": 64, "attention.mode": "block",
        "attention.block_size": 4, "data.seq_len": 16, "model.max_position_embeddings": 64,
        "data.blend": [[1.0, "store"]]}


def _load(**overrides):
    return load_config(overrides={**BASE, **overrides})


def test_every_section_validates_without_arguments_and_returns_itself():
    cfg = _load()
    for name in RunConfig.sections():
        section = getattr(cfg, name)
        assert list(inspect.signature(type(section).validate).parameters) == ["self"], name
        assert section.validate() is section, name
    assert cfg.validate() is cfg


def _validate_methods():
    """(file, class, FunctionDef) of every ``validate`` method of a dataclass in the package."""
    for path in sorted((ROOT / "megatron_diffusion").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            if not any("dataclass" in ast.unparse(d) for d in node.decorator_list):
                continue
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "validate":
                    yield path.relative_to(ROOT), node.name, item


def test_one_validate_signature_in_the_whole_package():
    found = list(_validate_methods())
    assert len(found) >= 12  # the walk sees the config classes
    for path, cls, fn in found:
        args = [a.arg for a in fn.args.args + fn.args.kwonlyargs] + [
            a.arg for a in (fn.args.vararg, fn.args.kwarg) if a]
        returns = ast.unparse(fn.returns) if fn.returns else None
        assert args == ["self"], f"{path}: {cls}.validate{tuple(args)}"
        assert returns in ("Self", repr(cls)), f"{path}: {cls}.validate -> {returns}"


@pytest.mark.parametrize("overrides,expected", [
    # the infill evaluation reads the eval_iters validation micro-batches: none is an error now
    ({"training.infill_eval_interval": 5, "training.eval_iters": 0},
     "training.infill_eval_interval: got 5, which needs training.eval_iters >= 1"),
    # used to pass loading and fail in the first forward pass (loss/elbo.py)
    ({"loss.ar_loss_weight": 0.5},
     "loss.ar_loss_weight: an AR loss on the clean stream needs attention.mode=block with "
     "attention.clean_stream=causal"),
    ({"loss.ar_loss_weight": 0.5, "attention.mode": "causal"}, "loss.ar_loss_weight: an AR loss"),
    ({"loss.ar_loss_weight": -1.0}, "loss.ar_loss_weight: got -1.0, expected a number >= 0"),
    ({"attention.block_size": 5},
     "attention.block_size: got 5, expected a divisor of data.seq_len 16"),
    ({"parallel.tensor_model_parallel_size": 4},
     "parallel.tensor_model_parallel_size: 4 must divide model.num_attention_heads"),
    ({"corruption.t_min": 1.0}, "corruption.t_min: got 1.0, expected a number in [0.0, 1.0)"),
    ({"data.sft_max_eos": 0}, "data.sft_max_eos: got 0, expected an integer >= 1"),
    ({"optimizer.min_lr": 1.0}, "optimizer.min_lr: got 1.0, expected a number in [0, 0.0003]"),
    # accepted before, then non-finite weights and a traceback at the first save
    ({"optimizer.lr": float("inf")}, "optimizer.lr: got inf, expected a finite number > 0"),
    ({"parallel.virtual_pipeline_model_parallel_size": 2},
     "parallel.virtual_pipeline_model_parallel_size: got 2, expected null"),
    # 0 would make every collective fail at once; gloo took it as "wait forever" in no version
    ({"parallel.collective_timeout_s": 0},
     "parallel.collective_timeout_s: got 0.0, expected a number > 0"),
])
def test_bad_values_and_combinations_fail_at_load_in_one_line(overrides, expected):
    with pytest.raises(UsageError) as e:
        _load(**overrides)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value), str(e.value)


def test_the_combinations_the_checks_allow_still_load():
    _load(**{"training.infill_eval_interval": 5, "training.eval_iters": 1})
    _load(**{"training.infill_eval_interval": 0, "training.eval_iters": 0})
    _load(**{"loss.ar_loss_weight": 0.5, "attention.clean_stream": "causal"})
    _load(**{"attention.block_size": 5, "attention.mode": "causal"})  # B unused outside block


def test_loading_the_run_config_does_not_import_megatron():
    import subprocess
    import sys

    code = ("import sys; from megatron_diffusion.config import load_config; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'megatron'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
