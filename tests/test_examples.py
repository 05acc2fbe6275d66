"""Every example config loads and validates as ``train`` reads it (``training.step_source:
onpolicy`` with the on-policy config), and every example prompt set is a valid prompt set: an
example that drifts from the config schema fails here, not in a user's first run."""

from pathlib import Path

import pytest

from megatron_diffusion.config import RunConfig, load_config, read_yaml
from megatron_diffusion.onpolicy.config import OnPolicyRunConfig
from megatron_diffusion.onpolicy.prompts import read_prompts
from tests.helpers import ROOT

EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_validates(path: Path):
    onpolicy = read_yaml(path).get("training", {}).get("step_source") == "onpolicy"
    assert onpolicy == ("onpolicy" in read_yaml(path))  # the section goes with its step source
    cls = OnPolicyRunConfig if onpolicy else RunConfig
    cfg = load_config(path, validate=False, cls=cls)
    if cfg.model.vocab_size == 0:  # both completed from the data store when a run starts
        cfg.model.vocab_size, cfg.model.mask_token_id = 49152, 49151
    if cfg.model.transformer_impl == "transformer_engine":  # a CUDA machine's; the rest is checked
        cfg.model.transformer_impl, cfg.model.fp8 = "local", None
    if cls is OnPolicyRunConfig and not (ROOT / cfg.onpolicy.prompts).is_file():
        cfg.onpolicy.prompts = str(EXAMPLES / "onpolicy_easy_tasks.jsonl")  # written by its script
    assert isinstance(cfg.validate(), cls)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("onpolicy_*.jsonl")), ids=lambda p: p.name)
def test_example_prompt_set_reads_with_tests(path: Path):
    records = read_prompts(path)
    assert len(records) >= 8 and all(r.has_test for r in records)
    assert len({r.task_id for r in records}) == len(records)


def test_heldout_tasks_are_not_training_tasks():
    train = {r.entry_point for r in read_prompts(EXAMPLES / "onpolicy_easy_tasks.jsonl")}
    heldout = {r.entry_point for r in read_prompts(EXAMPLES / "onpolicy_easy_heldout.jsonl")}
    assert not train & heldout
