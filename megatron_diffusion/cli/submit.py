"""``megatron-diffusion submit``: submit a training job to SLURM from Python, with submitit.

    megatron-diffusion submit --nodes 4 --gpus-per-node 8 --time 1440 --partition h100 \\
        -- train --config examples/cpt.yaml --resume auto

The words after ``--`` are the command every rank runs (a ``megatron-diffusion`` subcommand, or
the arguments of ``--module``). submitit writes and submits an sbatch script that starts one task
per rank with ``srun``; each task runs the command in-process, reading its rank from SLURM
through ``launch_env``. It is the ``srun`` launch mode of ``slurm/pretrain.sbatch`` with the
same preemption contract: SLURM signals every task (``--signal=USR2@<delay>``), the program
checkpoints, writes ``RUN_DIR/PREEMPTED`` and exits 0, and rank 0 requeues the job
(``scontrol requeue``); submitit runs the same command again in the requeued job. A signal
that arrives before the program has installed its own handler reaches submitit's, which
requeues through ``TrainJob.checkpoint``.

submitit is an optional dependency (``pip install 'megatron-diffusion[submitit]'``), imported only
when a job is submitted.
"""

import argparse
import os
import runpy
import shlex
import subprocess
import sys
import time
from pathlib import Path

from megatron_diffusion.errors import UsageError, check_int
from megatron_diffusion.parallel.launch_env import detect_launch_env
from megatron_diffusion.parallel.preemption import marker_exists
from megatron_diffusion.parallel.run_dir import resolve_run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (0: CPU job)")
    parser.add_argument("--tasks-per-node", type=int, default=None,
                        help="ranks per node (default: --gpus-per-node)")
    parser.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per rank")
    parser.add_argument("--time", type=int, default=1440, help="time limit in minutes")
    parser.add_argument("--partition", default=None, help="SLURM partition")
    parser.add_argument("--account", default=None, help="SLURM account")
    parser.add_argument("--qos", default=None, help="SLURM quality of service")
    parser.add_argument("--job-name", default="mdiff-train", help="SLURM job name")
    parser.add_argument("--folder", default="logs/submitit", help="submitit's logs and pickles")
    parser.add_argument("--signal-delay", type=int, default=120,
                        help="seconds before the time limit at which SIGUSR2 asks for a checkpoint")
    parser.add_argument("--setup", action="append", default=[],
                        help="shell command run before the tasks start (repeatable)")
    parser.add_argument("--module", default="megatron_diffusion.cli",
                        help="python module each rank runs with the command as its arguments")
    parser.add_argument("--dry-run", action="store_true", help="print the job, do not submit")
    # Not dest "command": the top-level parser keeps the subcommand's name there.
    parser.add_argument("program_args", metavar="COMMAND", nargs=argparse.REMAINDER,
                        help="-- then the command, e.g. -- train --config cfg.yaml --resume auto")


def slurm_parameters(args: argparse.Namespace) -> dict:
    """submitit ``AutoExecutor.update_parameters`` keywords for the parsed options."""
    check_int("--nodes", args.nodes, lo=1)
    check_int("--gpus-per-node", args.gpus_per_node, lo=0)
    tasks_per_node = args.gpus_per_node if args.tasks_per_node is None else args.tasks_per_node
    check_int("--tasks-per-node", tasks_per_node, lo=1)
    check_int("--time", args.time, lo=1)
    check_int("--signal-delay", args.signal_delay, lo=1)
    if args.signal_delay >= args.time * 60:
        raise UsageError(f"--signal-delay: got {args.signal_delay} s, expected < --time "
                         f"({args.time * 60} s)")
    params = {
        "name": args.job_name,
        "nodes": args.nodes,
        "tasks_per_node": tasks_per_node,
        "timeout_min": args.time,
        "slurm_signal_delay_s": args.signal_delay,
        "slurm_additional_parameters": {"requeue": True},
        "stderr_to_stdout": True,
    }
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    if args.cpus_per_task is not None:
        check_int("--cpus-per-task", args.cpus_per_task, lo=1)
        params["cpus_per_task"] = args.cpus_per_task
    for value, key in ((args.partition, "slurm_partition"), (args.account, "slurm_account"),
                       (args.qos, "slurm_qos")):
        if value is not None:
            params[key] = value
    if args.setup:
        params["slurm_setup"] = list(args.setup)
    return params


def _run_dir_of(command: list[str]) -> str | None:
    for i, word in enumerate(command):
        if word == "--run-dir" and i + 1 < len(command):
            return command[i + 1]
        if word.startswith("--run-dir="):
            return word.split("=", 1)[1]
    return None


class TrainJob:
    """What each SLURM task runs: ``python -m <module> <command>``, in-process, then requeue."""

    def __init__(self, module: str, command: list[str]):
        self.module = module
        self.command = list(command)

    def __call__(self) -> int:
        command = list(self.command)
        run_dir = _run_dir_of(command)
        if run_dir is None:  # runs/<job name>-<job id>: the same in every task and every restart
            run_dir = str(resolve_run_dir(None))
            command += ["--run-dir", run_dir]
        sys.argv = [self.module, *command]
        try:
            runpy.run_module(self.module, run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        env = detect_launch_env()
        if status == 0 and marker_exists(run_dir):
            if env.is_main:
                print(f"submit: {run_dir}/PREEMPTED after a clean exit: requeueing job "
                      f"{env.job_id}", flush=True)
                subprocess.run(["scontrol", "requeue", str(env.job_id)], check=True, timeout=60)
                time.sleep(300)  # SLURM ends this task; submitit runs the command again
            return 0
        if status != 0:
            raise RuntimeError(f"{self.module} {shlex.join(command)} exited with status {status}")
        return status

    def checkpoint(self, *args, **kwargs):
        """submitit's hook for a signal before the program's own handler: requeue as is."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.module, self.command))


def run(args: argparse.Namespace) -> int:
    given = args.program_args
    command = given[1:] if given[:1] == ["--"] else list(given)
    if not command:
        raise UsageError("command: missing; give it after --, e.g. -- train --config cfg.yaml")
    params = slurm_parameters(args)
    if args.dry_run:
        print(f"submit: would submit {args.module} {shlex.join(command)}")
        for key, value in params.items():
            print(f"  {key} = {value!r}")
        return 0
    try:
        import submitit
    except ModuleNotFoundError:
        raise UsageError(
            "submitit: not installed; install it with pip install 'megatron-diffusion[submitit]'"
        ) from None
    executor = submitit.AutoExecutor(folder=args.folder, cluster="slurm")
    executor.update_parameters(**params)
    job = executor.submit(TrainJob(args.module, command))
    print(f"submit: job {job.job_id}, logs in {Path(args.folder).resolve()}", flush=True)
    return 0


if __name__ == "__main__":  # python -m megatron_diffusion.cli.submit ...
    from megatron_diffusion.cli import main

    sys.exit(main(["submit", *sys.argv[1:]]))
