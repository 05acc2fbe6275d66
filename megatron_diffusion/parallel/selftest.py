"""Cluster smoke test: does every rank know who it is, and can they all talk?

Run it the way the trainer is run, e.g. in ``slurm/pretrain.sbatch`` with
``PROGRAM="-m megatron_diffusion.parallel.selftest"``, or by hand::

    srun -N2 --ntasks-per-node=8 python -m megatron_diffusion.parallel.selftest
    torchrun --nproc-per-node 2 -m megatron_diffusion.parallel.selftest --backend gloo

Every rank reads its launch environment (``launch_env``), joins the default process group and
gathers every rank's view. The test fails (exit 1) unless the global ranks are 0..W-1 exactly
once, every node's local ranks are 0..L-1 with L its local world size, ranks of one node run on
one host, all ranks agree on world size, node count and launcher, and an all-reduce of
``rank + 1`` gives ``W (W + 1) / 2``. Rank 0 prints ``SELFTEST {json}`` with what it saw.

With ``--steps N --run-dir DIR`` it then runs N collective "steps" the way a trainer would and
honours the preemption contract of ``preemption``: on SIGUSR2/SIGTERM it stops after the step in
which any rank saw the signal, saves the step counter to ``DIR/selftest_state.json``, writes
``DIR/PREEMPTED`` and exits 0; started again (a requeue) it resumes from the counter. Each rank
appends what signal it received to ``DIR/signals.log``, which shows how a cluster delivers them.
"""

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from megatron_diffusion.errors import UsageError, check_choice, check_int
from megatron_diffusion.fileio import write_text_atomic
from megatron_diffusion.parallel.launch_env import detect_launch_env, start_process_group
from megatron_diffusion.parallel.preemption import Preemption, clear_marker, write_marker

STATE_FILE = "selftest_state.json"
PROGRESS_FILE = "selftest_progress"
SIGNALS_FILE = "signals.log"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default=None, help="nccl or gloo (default: nccl with CUDA)")
    parser.add_argument("--expect-world-size", type=int, default=None, help="fail unless W is this")
    parser.add_argument("--steps", type=int, default=0, help="then run this many resumable steps")
    parser.add_argument("--step-seconds", type=float, default=0.2, help="sleep per step")
    parser.add_argument("--run-dir", default=None, help="state, marker and signal log (--steps)")


def check_views(views: list[dict], reduced: float) -> list[str]:
    """Problems in the ranks' gathered views of the job (empty when consistent)."""
    problems = []
    world_size = len(views)
    if sorted(v["rank"] for v in views) != list(range(world_size)):
        problems.append(f"global ranks {sorted(v['rank'] for v in views)} != 0..{world_size - 1}")
    for key in ("world_size", "num_nodes", "launcher", "job_id"):
        values = {v[key] for v in views}
        if len(values) != 1:
            problems.append(f"ranks disagree on {key}: {sorted(map(str, values))}")
    if views[0]["world_size"] != world_size:
        problems.append(f"world_size {views[0]['world_size']} but {world_size} ranks joined")
    nodes: dict[int, list[dict]] = {}
    for v in views:
        nodes.setdefault(v["node_rank"], []).append(v)
    if sorted(nodes) != list(range(views[0]["num_nodes"])):
        problems.append(f"node ranks {sorted(nodes)} != 0..{views[0]['num_nodes'] - 1}")
    for node_rank, members in sorted(nodes.items()):
        local = sorted(v["local_rank"] for v in members)
        sizes = {v["local_world_size"] for v in members}
        if len(sizes) != 1 or local != list(range(sizes.pop())):
            problems.append(f"node {node_rank}: local ranks {local}, local_world_size {sizes}")
        hosts = {v["host"] for v in members}
        if len(hosts) != 1:
            problems.append(f"node {node_rank} spans hosts {sorted(hosts)}")
    expected = world_size * (world_size + 1) / 2
    if reduced != expected:
        problems.append(f"all_reduce(rank + 1) = {reduced}, expected {expected}")
    return problems


def _run_steps(args, env, preemption, device) -> int:
    import torch
    import torch.distributed as dist

    run_dir = Path(args.run_dir)
    state_path = run_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {"step": 0, "runs": []}
    dist.barrier()  # every rank has read the state before rank 0 may rewrite it
    if env.is_main:
        clear_marker(run_dir)
    start = state["step"]
    step = start
    while step < args.steps:
        value = torch.tensor([float(step)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        if value.item() != step:
            print(f"selftest: rank {env.rank} at step {step}, another at {value.item()}", flush=True)
            return 1
        time.sleep(args.step_seconds)
        step += 1
        if env.is_main:
            write_text_atomic(run_dir / PROGRESS_FILE, f"{env.restart_count} {step}\n")
        if preemption.should_stop():
            break
    signal_name = preemption.received.name if preemption.received else "none"
    with open(run_dir / SIGNALS_FILE, "a") as f:  # one short append per rank
        f.write(
            f"restart={env.restart_count} rank={env.rank} host={socket.gethostname()} "
            f"pid={os.getpid()} step={step} signal={signal_name}\n"
        )
    preempted = step < args.steps
    if env.is_main:
        state["step"] = step
        run = {"restart": env.restart_count, "start_step": start, "end_step": step}
        state["runs"].append(dict(run, preempted=preempted, signal=signal_name))
        write_text_atomic(state_path, json.dumps(state) + "\n")  # the "checkpoint"
        if preempted:
            write_marker(run_dir, f"selftest step {step} {signal_name}")
        print(f"selftest: {'preempted' if preempted else 'finished'} at step {step}", flush=True)
    dist.barrier()
    return 0


def run(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    if args.backend is not None:
        check_choice("--backend", args.backend, ("nccl", "gloo"))
    if args.steps:
        check_int("--steps", args.steps, lo=1)
        if not args.run_dir:
            raise UsageError("--run-dir: required with --steps (holds the resumable counter)")
        Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    preemption = Preemption().install()  # before the slow start-up, so no signal is lost
    env = start_process_group(detect_launch_env(), backend=args.backend)
    try:
        device = f"cuda:{env.local_rank}" if dist.get_backend() == "nccl" else "cpu"
        view = dict(env.as_dict(), host=socket.gethostname(), pid=os.getpid())
        views: list = [None] * env.world_size
        dist.all_gather_object(views, view)
        value = torch.tensor([float(env.rank + 1)], dtype=torch.float64, device=device)
        dist.all_reduce(value)
        problems = check_views(views, value.item())
        if args.expect_world_size is not None and env.world_size != args.expect_world_size:
            problems.append(f"world_size {env.world_size}, expected {args.expect_world_size}")
        line = (
            f"selftest rank {env.rank}/{env.world_size} local {env.local_rank}/"
            f"{env.local_world_size} node {env.node_rank}/{env.num_nodes} host {view['host']} "
            f"launcher {env.launcher} master {env.master_addr}:{env.master_port}\n"
        )
        sys.stdout.write(line)  # one write, so ranks sharing a log do not interleave mid-line
        sys.stdout.flush()
        if env.is_main:
            summary = {
                "ok": not problems,
                "problems": problems,
                "backend": dist.get_backend(),
                "world_size": env.world_size,
                "num_nodes": env.num_nodes,
                "launcher": env.launcher,
                "job_id": env.job_id,
                "restart_count": env.restart_count,
                "master": f"{env.master_addr}:{env.master_port}",
                "hosts": sorted({v["host"] for v in views}),
            }
            print("SELFTEST " + json.dumps(summary), flush=True)
        if problems:
            return 1
        return _run_steps(args, env, preemption, device) if args.steps else 0
    finally:
        dist.destroy_process_group()
        preemption.uninstall()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_diffusion.parallel.selftest",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"selftest: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
