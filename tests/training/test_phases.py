"""Multi-phase runs (training/phases.py): AR then block diffusion with shift, resumable mid-phase."""

import subprocess
import sys

import pytest
import yaml

from tests.helpers import ROOT
from tests.training.conftest import TINY, env, losses

pytestmark = pytest.mark.slow
PHASES = [{"name": "ar", "train_iters": 3, "loss.objective": "ar", "attention.mode": "causal"},
          {"name": "block", "train_iters": 4, "attention": {"mode": "block", "block_size": 4},
           "model.logit_shift": True}]


def phased_config(tmp_path, phases=PHASES):
    cfg = yaml.safe_load((ROOT / "examples" / "cpu_demo.yaml").read_text())
    cfg["phases"] = phases
    path = tmp_path / "phased.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(store, config, run_dir, *overrides):
    cmd = [sys.executable, "-m", "megatron_diffusion.cli", "train", "--config", str(config),
           "--run-dir", str(run_dir), "--resume", "auto", f"data.blend=[[1.0, {store}]]",
           *TINY, *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)


def ok(proc):
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_two_phases_resume_mid_phase_two_with_identical_losses(tiny_store, tmp_path):
    config = phased_config(tmp_path)
    straight = tmp_path / "straight"
    ok(train(tiny_store, config, straight))
    ar, block = straight / "phase1-ar", straight / "phase2-block"
    assert sorted(losses(ar)) == [1, 2, 3] and sorted(losses(block)) == [1, 2, 3, 4]
    assert yaml.safe_load((block / "config.yaml").read_text())["model"]["logit_shift"] is True
    assert yaml.safe_load((ar / "config.yaml").read_text())["loss"]["objective"] == "ar"

    run = tmp_path / "run"
    ok(train(tiny_store, config, run, "training.exit_interval=2"))  # stops inside phase 1
    assert not (run / "phase2-block").exists()
    ok(train(tiny_store, config, run, "training.exit_interval=2"))  # ends 1, stops inside 2
    assert sorted(losses(run / "phase2-block")) == [1, 2]
    last = train(tiny_store, config, run)  # phase 1 is skipped, phase 2 resumes at step 2
    ok(last)
    assert losses(run / "phase1-ar") == losses(ar)
    assert losses(run / "phase2-block") == losses(block)  # identical floats
    said = [line for line in last.stderr.splitlines() if line.startswith("phase ")]
    assert said == [f"phase 1/2 (ar): finished at {run / 'phase1-ar' / 'checkpoints' / 'iter_0000003'}, "
                    "skipped", f"phase 2/2 (block): 4 steps in {run / 'phase2-block'}"]


@pytest.mark.parametrize("phases,needle", [
    ([{"name": "ar"}], "phases[0].train_iters"),
    ([{"train_iters": 2, "model.num_layerz": 2}], "model.num_layerz"),
    ([{"train_iters": 2, "name": "a b"}], "phases[0].name"),
    ([{"train_iters": 2}, {"train_iters": 2, "name": "phase1"}], "used twice"),
    ([], "non-empty"),
    ([{"train_iters": 2}, {"train_iters": 2, "attention.block_size": 5}], "block_size"),
])
def test_bad_phases_fail_in_one_line_before_any_work(phases, needle, tiny_store, tmp_path,
                                                    capsys):
    from megatron_diffusion.cli import main

    run = tmp_path / "run"
    code = main(["train", "--config", str(phased_config(tmp_path, phases)), "--run-dir", str(run),
                 f"data.blend=[[1.0, {tiny_store}]]", *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err[-2000:]
    assert not run.exists()


def test_the_old_stages_key_is_refused_with_its_new_name(tiny_store, tmp_path, capsys):
    """``stages:`` was renamed ``phases:`` ("stage" is the corruption curriculum's word): a config
    with the old key is one line naming both, before anything is written."""
    from megatron_diffusion.cli import main

    config = phased_config(tmp_path)
    config.write_text(config.read_text().replace("phases:", "stages:"))
    run = tmp_path / "run"
    code = main(["train", "--config", str(config), "--run-dir", str(run),
                 f"data.blend=[[1.0, {tiny_store}]]", *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "stages: renamed to phases" in err, err
    assert not run.exists()


def test_a_run_begun_with_stage_directories_keeps_them(tmp_path):
    """A run started before the rename resumes in its ``stage<i>-<name>`` directories."""
    from megatron_diffusion.training.phases import load_phases

    (tmp_path / "stage1-ar").mkdir()
    phases = load_phases(phased_config(tmp_path), [], tmp_path)
    assert [p.run_dir.name for p in phases] == ["stage1-ar", "phase2-block"]


def test_the_smollm2_recipe_is_ar_then_shifted_block_diffusion(tmp_path):
    from megatron_diffusion.training.phases import load_phases

    phases = load_phases(ROOT / "examples" / "smollm2_cpt.yaml", ["optimizer.lr=1.0e-5"], tmp_path)
    ar, block = (s.cfg for s in phases)
    assert [s.run_dir.name for s in phases] == ["phase1-ar", "phase2-block4"]
    assert (ar.loss.objective, ar.attention.mode) == ("ar", "causal")
    assert (block.loss.objective, block.attention.mode, block.attention.block_size,
            block.model.logit_shift) == ("diffusion", "block", 4, True)
    assert ar.optimizer.lr == block.optimizer.lr == 1.0e-5  # overrides reach every phase
    assert not any(s.cfg.is_explicit("model.rotary_base") for s in phases)  # from --init-from


class _PreemptedAtItsLastStep:
    """A phase trainer that did every step, then got SIGTERM during its final save: what
    ``Trainer._preempted`` leaves (the phase's PREEMPTED marker, ``preempted``, exit 0)."""

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


def test_preemption_during_a_phases_final_save_stops_the_run(tiny_store, tmp_path, monkeypatch):
    """Before: phase 1 printed 'saved step N, exiting', phase 2 trained to the end, exit 0,
    no PREEMPTED in RUN_DIR, so SLURM never requeued."""
    from megatron_diffusion.parallel.preemption import MARKER
    from megatron_diffusion.training.phases import load_phases, run_phases

    run = tmp_path / "run"
    phases = load_phases(phased_config(tmp_path), [f"data.blend=[[1.0, {tiny_store}]]", *TINY], run)
    monkeypatch.setattr("megatron_diffusion.training.phases.Trainer", _PreemptedAtItsLastStep)
    _PreemptedAtItsLastStep.calls = []
    assert run_phases(phases, run, resume="auto", init_from=None, argv=[]) == 0
    assert [c[0] for c in _PreemptedAtItsLastStep.calls] == ["phase1-ar"]  # phase 2 not started
    assert (run / MARKER).read_text().split()[1:] == ["phase1", "3"]


def test_overwrite_reaches_every_phase_and_resume_auto_with_it_is_refused(tiny_store, tmp_path,
                                                                        monkeypatch):
    from megatron_diffusion.errors import UsageError
    from megatron_diffusion.training.phases import load_phases, run_phases

    run = tmp_path / "run"
    phases = load_phases(phased_config(tmp_path), [f"data.blend=[[1.0, {tiny_store}]]", *TINY], run)
    monkeypatch.setattr("megatron_diffusion.training.phases.Trainer", _PreemptedAtItsLastStep)
    _PreemptedAtItsLastStep.calls = []
    run_phases(phases, run, resume="none", init_from=None, argv=[], overwrite=True)
    assert _PreemptedAtItsLastStep.calls == [("phase1-ar", "none", True)]
    with pytest.raises(UsageError, match="--overwrite: replaces every phase's run"):
        run_phases(phases, run, resume="auto", init_from=None, argv=[], overwrite=True)


def test_a_multi_phase_run_directory_as_a_checkpoint_names_its_phases(tmp_path):
    """``sample --checkpoint RUN_DIR`` of a multi-phase run said only 'not a checkpoint'."""
    from megatron_diffusion.errors import UsageError
    from megatron_diffusion.training.checkpoint import resolve_checkpoint

    for name in ("phase1-ar", "phase2-block4", "phase10-last"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
    with pytest.raises(UsageError) as e:
        resolve_checkpoint(tmp_path)
    assert str(e.value) == (f"--checkpoint: {tmp_path} is a multi-phase run; give one phase's "
                            f"directory, e.g. {tmp_path / 'phase10-last'} (phases: phase1-ar, "
                            "phase2-block4, phase10-last)")
