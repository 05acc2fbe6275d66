"""The ``onpolicy`` stage end to end on CPU (tiny model, four prompts with tests): it trains,
logs its figures, resumes exactly, is refused on bad input before anything is written, saves
and exits 0 on SIGTERM, and gives the same figures under TP=2 and in one process."""

import json
import os
import signal
import subprocess

import pytest
import yaml

from tests.faults.conftest import metric_lines, wait_for
from tests.helpers import ROOT
from tests.training.conftest import env, run_train, train_cmd

pytestmark = pytest.mark.slow
STEPS = 4
PROMPTS = [
    ("def add(a, b):\n", "    assert candidate(2, 3) == 5\n", "add"),
    ("def neg(a):\n", "    assert candidate(2) == -2\n", "neg"),
    ("def first(xs):\n", "    assert candidate([4, 5]) == 4\n", "first"),
    ("def is_empty(xs):\n", "    assert candidate([])\n", "is_empty"),
]
ONPOLICY = ["training.step_source=onpolicy", "data.seq_len=32", "onpolicy.max_new_tokens=12",
            "onpolicy.prompts_per_step=2",
            "onpolicy.group_size=2", "onpolicy.threshold=0.004", "optimizer.lr=0.01"]
KEYS = {"loss", "reward", "verifier", "steps_per_block", "tokens_per_forward", "kl", "surrogate",
        "completion_tokens", "generation_s", "grad_norm"}


@pytest.fixture(scope="module")
def base(tiny_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("base")
    run_train(tiny_store, run, "training.train_iters=2", "data.seq_len=32")
    prompts = run / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "entry_point": e,
                                           "test": f"def check(candidate):\n{t}"}) + "\n"
                               for p, t, e in PROMPTS))
    return run, prompts


def _args(base, *extra):
    run, prompts = base
    return [f"onpolicy.prompts={prompts}", *ONPOLICY, f"training.train_iters={STEPS}", *extra]


def _onpolicy(store, base, run, *extra, nproc=1, check=True):
    cmd = train_cmd(store, run, *_args(base, *extra), nproc=nproc)
    cmd[cmd.index("--resume"):cmd.index("--resume") + 2] = ["--resume", "auto", "--init-from",
                                                            str(base[0])]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _records(run):
    drop = {"tokens_per_s", "step_time_s", "generation_s"}  # timings
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


def test_trains_logs_and_resumes_exactly(tiny_store, base, tmp_path):
    _onpolicy(tiny_store, base, tmp_path / "straight")
    straight = _records(tmp_path / "straight")
    assert [r["step"] for r in straight] == list(range(1, STEPS + 1))
    assert KEYS <= set(json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[0]))
    assert all(r["stage"] == "onpolicy" and r["tokens_per_forward"] >= 1 for r in straight)
    assert any(r["tokens_per_forward"] > 1 for r in straight)  # some parallel steps
    assert any(r["grad_norm"] > 0 for r in straight)  # rewards differ within groups: a signal
    meta = json.loads((tmp_path / "straight" / "checkpoints" / f"iter_{STEPS:07d}" / "meta.json").read_text())
    assert "onpolicy" not in meta["config"] and meta["onpolicy"]["group_size"] == 2
    run = tmp_path / "resumed"
    _onpolicy(tiny_store, base, run, f"training.exit_interval={STEPS // 2}")
    assert len(_records(run)) == STEPS // 2
    other = _onpolicy(tiny_store, (tmp_path / "straight", base[1]), run, check=False)
    assert other.returncode == 2 and "is not the reference" in other.stderr.strip().splitlines()[-1]
    # the same reference named by a relative path (the run recorded it resolved)
    _onpolicy(tiny_store, (os.path.relpath(base[0], ROOT), base[1]), run)
    assert _records(run) == straight


def test_bad_input_is_one_line_and_writes_nothing(tiny_store, base, tmp_path):
    no_tests = tmp_path / "no_tests.jsonl"
    no_tests.write_text(json.dumps({"prompt": "def f():\n"}) + "\n")
    cases = [([f"onpolicy.prompts={no_tests}"], "has no test"),
             (["onpolicy.group_size=1"], "onpolicy.group_size"),
             (["onpolicy.max_new_tokens=30"], "onpolicy.max_new_tokens"),
             (["data.seq_len=16"], "data.seq_len: 16 cannot hold"),
             (["parallel.sequence_parallel=true"], "parallel.sequence_parallel")]
    for extra, message in cases:
        run = tmp_path / "run"
        proc = _onpolicy(tiny_store, base, run, *extra, check=False)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert message in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
        assert not run.exists()
    cmd = train_cmd(tiny_store, tmp_path / "run", *_args(base))  # no --init-from
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--init-from" in proc.stderr.strip().splitlines()[-1]


def test_sigterm_saves_and_exits_0(tiny_store, base, tmp_path):
    run = tmp_path / "run"
    cmd = train_cmd(tiny_store, run, *_args(base, "training.train_iters=400"))
    cmd[cmd.index("--resume"):cmd.index("--resume") + 2] = ["--init-from", str(base[0])]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: metric_lines(run) >= 2, timeout=300, what="two logged steps")
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    saved = int((run / "PREEMPTED").read_text().split()[-1])
    assert (run / "checkpoints" / f"iter_{saved:07d}" / "meta.json").is_file()


@pytest.mark.distributed
def test_tensor_parallel_matches_one_process(tiny_store, base, tmp_path):
    _onpolicy(tiny_store, base, tmp_path / "one", "training.train_iters=2")
    _onpolicy(tiny_store, base, tmp_path / "tp2", "training.train_iters=2",
              "parallel.tensor_model_parallel_size=2", nproc=2)
    one, two = _records(tmp_path / "one"), _records(tmp_path / "tp2")
    assert [r["tokens_per_forward"] for r in one] == [r["tokens_per_forward"] for r in two]
    for a, b in zip(one, two):  # the gradient too (the commit-choice term's TP reductions)
        for key in ("loss", "grad_norm", "open_logq", "kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-5), key


@pytest.mark.distributed
def test_data_parallel_counts_every_rank(tiny_store, base, tmp_path):
    _onpolicy(tiny_store, base, tmp_path / "dp2", "training.train_iters=2", nproc=2)
    records = _records(tmp_path / "dp2")
    assert len(records) == 2
    # 3 prompts per step do not split over 2 ranks: one line, before the run dir is written
    proc = _onpolicy(tiny_store, base, tmp_path / "dp3", "onpolicy.prompts_per_step=3", nproc=2,
                     check=False)
    assert proc.returncode != 0 and "onpolicy.prompts_per_step: got 3" in proc.stderr
    assert not (tmp_path / "dp3").exists()
    # 2 prompts x 2 trajectories over both ranks, each completion 12 tokens (no stop token)
    assert all(r["tokens"] <= 4 * 12 and r["completion_tokens"] <= 12 for r in records)


def test_an_onpolicy_stage_of_a_staged_run(tiny_store, base, tmp_path):
    """A stage whose keys name the onpolicy source and section is an on-policy stage, started
    from the previous stage's final checkpoint; the other stages train as before."""
    cfg = yaml.safe_load((ROOT / "examples" / "cpu_demo.yaml").read_text())
    onpolicy = dict(o.split("=", 1) for o in ONPOLICY if o.startswith(("onpolicy.", "training.")))
    cfg["stages"] = [{"name": "cpt", "train_iters": 2},
                     {"name": "op", "train_iters": 2, "onpolicy.prompts": str(base[1]),
                      **{k: yaml.safe_load(v) for k, v in onpolicy.items()}}]
    staged = tmp_path / "staged.yaml"
    staged.write_text(yaml.safe_dump(cfg))
    cmd = train_cmd(tiny_store, tmp_path / "run", "data.seq_len=32", "optimizer.lr=0.01")
    cmd[cmd.index("--config") + 1] = str(staged)
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert {r["stage"] for r in _records(tmp_path / "run" / "stage1-cpt")} <= {"mask", "edit"}
    second = _records(tmp_path / "run" / "stage2-op")
    assert [r["stage"] for r in second] == ["onpolicy", "onpolicy"]
    meta = json.loads((tmp_path / "run" / "stage2-op" / "checkpoints" / "iter_0000002" / "meta.json").read_text())
    assert meta["onpolicy_reference"].endswith("stage1-cpt/checkpoints/iter_0000002")
