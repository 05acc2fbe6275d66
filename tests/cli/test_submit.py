"""``megatron-diffusion submit``: option checking and the mapping onto submitit's parameters.

Submission itself runs against a real SLURM in tests/slurm (when submitit is installed).
"""

import sys

import pytest

from megatron_diffusion import cli
from megatron_diffusion.cli.submit import _run_dir_of, slurm_parameters


def _args(*argv):
    return cli.build_parser("submit").parse_args(["submit", *argv])


def test_defaults_are_one_node_of_eight_gpus_with_requeue():
    params = slurm_parameters(_args("--", "train", "--config", "c.yaml"))
    assert params == {
        "name": "mdiff-train",
        "nodes": 1,
        "tasks_per_node": 8,
        "gpus_per_node": 8,
        "timeout_min": 1440,
        "slurm_signal_delay_s": 120,
        "slurm_additional_parameters": {"requeue": True},
        "stderr_to_stdout": True,
    }


def test_cluster_options_are_passed():
    args = _args("--nodes", "4", "--gpus-per-node", "0", "--tasks-per-node", "2",
                 "--cpus-per-task", "3", "--partition", "h20", "--account", "a", "--qos", "q",
                 "--setup", "module load cuda", "--setup", "source env.sh", "--", "train")
    params = slurm_parameters(args)
    assert "gpus_per_node" not in params and params["tasks_per_node"] == 2
    assert (params["nodes"], params["cpus_per_task"]) == (4, 3)
    assert (params["slurm_partition"], params["slurm_account"], params["slurm_qos"]) == ("h20", "a", "q")
    assert params["slurm_setup"] == ["module load cuda", "source env.sh"]
    assert args.program_args == ["--", "train"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--nodes", "0"], "--nodes: got 0"),
        (["--gpus-per-node", "0"], "--tasks-per-node: got 0"),
        (["--time", "1"], "--signal-delay: got 120 s, expected < --time (60 s)"),
        (["--cpus-per-task", "-1"], "--cpus-per-task: got -1"),
    ],
)
def test_bad_options_name_themselves(argv, message, capsys):
    assert cli.main(["submit", "--dry-run", *argv, "--", "train"]) == 2
    assert message in capsys.readouterr().err


def test_command_is_required(capsys):
    assert cli.main(["submit", "--dry-run"]) == 2
    assert "command: missing" in capsys.readouterr().err


def test_dry_run_prints_the_job(capsys):
    assert cli.main(["submit", "--dry-run", "--", "train", "--config", "a b.yaml"]) == 0
    out = capsys.readouterr().out
    assert "megatron_diffusion.cli train --config 'a b.yaml'" in out and "nodes = 1" in out


def test_missing_submitit_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # makes `import submitit` fail
    assert cli.main(["submit", "--", "train"]) == 2
    assert "submitit: not installed" in capsys.readouterr().err


def test_run_dir_is_found_in_the_command():
    assert _run_dir_of(["train", "--run-dir", "r1"]) == "r1"
    assert _run_dir_of(["train", "--run-dir=r2", "x=1"]) == "r2"
    assert _run_dir_of(["train", "--config", "c"]) is None
