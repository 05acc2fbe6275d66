"""Staged runs (training/stages.py): AR then block diffusion with shift, resumable mid-stage."""

import subprocess
import sys

import pytest
import yaml

from tests.helpers import ROOT
from tests.training.conftest import TINY, env, losses

pytestmark = pytest.mark.slow
STAGES = [{"name": "ar", "train_iters": 3, "loss.objective": "ar", "attention.mode": "causal"},
          {"name": "block", "train_iters": 4, "attention": {"mode": "block", "block_size": 4},
           "model.logit_shift": True}]


def staged_config(tmp_path, stages=STAGES):
    cfg = yaml.safe_load((ROOT / "examples" / "cpu_demo.yaml").read_text())
    cfg["stages"] = stages
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(store, config, run_dir, *overrides):
    cmd = [sys.executable, "-m", "megatron_diffusion.cli", "train", "--config", str(config),
           "--run-dir", str(run_dir), "--resume", "auto", f"data.blend=[[1.0, {store}]]",
           *TINY, *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)


def ok(proc):
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_two_stages_resume_mid_stage_two_with_identical_losses(tiny_store, tmp_path):
    config = staged_config(tmp_path)
    straight = tmp_path / "straight"
    ok(train(tiny_store, config, straight))
    ar, block = straight / "stage1-ar", straight / "stage2-block"
    assert sorted(losses(ar)) == [1, 2, 3] and sorted(losses(block)) == [1, 2, 3, 4]
    assert yaml.safe_load((block / "config.yaml").read_text())["model"]["logit_shift"] is True
    assert yaml.safe_load((ar / "config.yaml").read_text())["loss"]["objective"] == "ar"

    run = tmp_path / "run"
    ok(train(tiny_store, config, run, "training.exit_interval=2"))  # stops inside stage 1
    assert not (run / "stage2-block").exists()
    ok(train(tiny_store, config, run, "training.exit_interval=2"))  # ends 1, stops inside 2
    assert sorted(losses(run / "stage2-block")) == [1, 2]
    ok(train(tiny_store, config, run))  # stage 1 is skipped, stage 2 resumes at step 2
    assert losses(run / "stage1-ar") == losses(ar)
    assert losses(run / "stage2-block") == losses(block)  # identical floats


@pytest.mark.parametrize("stages,needle", [
    ([{"name": "ar"}], "stages[0].train_iters"),
    ([{"train_iters": 2, "model.num_layerz": 2}], "model.num_layerz"),
    ([{"train_iters": 2, "name": "a b"}], "stages[0].name"),
    ([{"train_iters": 2}, {"train_iters": 2, "name": "stage1"}], "used twice"),
    ([], "non-empty"),
    ([{"train_iters": 2}, {"train_iters": 2, "attention.block_size": 5}], "block_size"),
])
def test_bad_stages_fail_in_one_line_before_any_work(stages, needle, tiny_store, tmp_path,
                                                    capsys):
    from megatron_diffusion.cli import main

    run = tmp_path / "run"
    code = main(["train", "--config", str(staged_config(tmp_path, stages)), "--run-dir", str(run),
                 f"data.blend=[[1.0, {tiny_store}]]", *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err[-2000:]
    assert not run.exists()


def test_the_smollm2_recipe_is_ar_then_shifted_block_diffusion(tmp_path):
    from megatron_diffusion.training.stages import load_stages

    stages = load_stages(ROOT / "examples" / "smollm2_cpt.yaml", ["optimizer.lr=1.0e-5"], tmp_path)
    ar, block = (s.cfg for s in stages)
    assert [s.run_dir.name for s in stages] == ["stage1-ar", "stage2-block4"]
    assert (ar.loss.objective, ar.attention.mode) == ("ar", "causal")
    assert (block.loss.objective, block.attention.mode, block.attention.block_size,
            block.model.logit_shift) == ("diffusion", "block", 4, True)
    assert ar.optimizer.lr == block.optimizer.lr == 1.0e-5  # overrides reach every stage
    assert not any(s.cfg.is_explicit("model.rotary_base") for s in stages)  # from --init-from


class _PreemptedAtItsLastStep:
    """A stage trainer that did every step, then got SIGTERM during its final save: what
    ``Trainer._preempted`` leaves (the stage's PREEMPTED marker, ``preempted``, exit 0)."""

    calls: list = []

    def __init__(self, cfg, run_dir, source, *, resume, init_from, argv, overwrite=False):
        self.cfg, self.run_dir, self.rank, self.step = cfg, run_dir, 0, 0
        self.preempted = False
        type(self).calls.append((run_dir.name, resume, overwrite))

    def setup(self):
        return self

    def train(self):
        from megatron_diffusion.parallel.preemption import write_marker

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.step = self.cfg.training.train_iters
        write_marker(self.run_dir, str(self.step))
        self.preempted = True
        return 0


def test_preemption_during_a_stages_final_save_stops_the_run(tiny_store, tmp_path, monkeypatch):
    """Before: stage 1 printed 'saved step N, exiting', stage 2 trained to the end, exit 0,
    no PREEMPTED in RUN_DIR, so SLURM never requeued."""
    from megatron_diffusion.parallel.preemption import MARKER
    from megatron_diffusion.training.stages import load_stages, run_stages

    run = tmp_path / "run"
    stages = load_stages(staged_config(tmp_path), [f"data.blend=[[1.0, {tiny_store}]]", *TINY], run)
    monkeypatch.setattr("megatron_diffusion.training.stages.Trainer", _PreemptedAtItsLastStep)
    _PreemptedAtItsLastStep.calls = []
    assert run_stages(stages, run, resume="auto", init_from=None, argv=[]) == 0
    assert [c[0] for c in _PreemptedAtItsLastStep.calls] == ["stage1-ar"]  # stage 2 not started
    assert (run / MARKER).read_text().split()[1:] == ["stage1", "3"]


def test_overwrite_reaches_every_stage_and_resume_auto_with_it_is_refused(tiny_store, tmp_path,
                                                                        monkeypatch):
    from megatron_diffusion.errors import UsageError
    from megatron_diffusion.training.stages import load_stages, run_stages

    run = tmp_path / "run"
    stages = load_stages(staged_config(tmp_path), [f"data.blend=[[1.0, {tiny_store}]]", *TINY], run)
    monkeypatch.setattr("megatron_diffusion.training.stages.Trainer", _PreemptedAtItsLastStep)
    _PreemptedAtItsLastStep.calls = []
    run_stages(stages, run, resume="none", init_from=None, argv=[], overwrite=True)
    assert _PreemptedAtItsLastStep.calls == [("stage1-ar", "none", True)]
    with pytest.raises(UsageError, match="--overwrite: replaces every stage's run"):
        run_stages(stages, run, resume="auto", init_from=None, argv=[], overwrite=True)
