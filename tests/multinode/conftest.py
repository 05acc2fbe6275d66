"""Two nodes on this machine for the ``multinode`` tier: slurm/two_node_cluster.sh, one per session.

Each node is a network namespace with its own address, hostname and /etc/hosts, cabled to a
bridge; processes started with ``TwoNodes.launch`` run on a node and talk to the other one over
the veth pair. Without root, or where namespaces cannot be made (a container without
CAP_NET_ADMIN), every test of the tier is skipped with the reason. Whatever a test leaves running
on a node is killed after it, and the cluster is taken down at the end of the session.
"""

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.training.conftest import train_cmd

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "slurm" / "two_node_cluster.sh"
_PORTS = itertools.count(29400)


def node_env(**extra: str) -> dict:
    """The environment of a process on a node: this checkout importable, no launcher variables."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                            "MASTER_PORT", "GROUP_RANK", "TORCHELASTIC_RESTART_COUNT")}
    environ.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    return environ


def train_args(store, run_dir, *overrides: str) -> list[str]:
    """``-m megatron_diffusion.cli train ...`` on tests/training's tiny model, resuming if it can
    (what follows the python executable, for torchrun)."""
    return train_cmd(store, run_dir, *overrides)[1:]


@dataclass
class TwoNodes:
    """Handle on the running cluster."""

    dir: Path
    prefix: str
    subnet: str
    procs: list = field(default_factory=list)

    def script(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(CLUSTER), args[0], str(self.dir), *args[1:]],
                              capture_output=True, text=True, timeout=timeout)

    def address(self, node: str) -> str:
        return f"{self.subnet}.{node[-1]}"

    def launch(self, node: str, command: list[str], log: Path, env: dict | None = None):
        """Start ``command`` on ``node`` (from the repo root); its output goes to ``log``."""
        with open(log, "w") as out:
            proc = subprocess.Popen(["bash", str(CLUSTER), "exec", str(self.dir), node, *command],
                                    cwd=REPO, env=env or node_env(), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def torchrun(self, node: str, nproc: int, port: int, args: list[str], log: Path,
                 rdzv_conf: str | None = None):
        """torchrun on ``node`` as one of 2 nodes, c10d rendezvous on node1's address."""
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                   f"--node-rank={int(node[-1]) - 1}", f"--nproc-per-node={nproc}",
                   "--rdzv-backend=c10d", f"--rdzv-endpoint=node1:{port}", f"--rdzv-id=md{port}",
                   "--max-restarts=0", *([f"--rdzv-conf={rdzv_conf}"] if rdzv_conf else []),
                   *args]
        return self.launch(node, command, log)

    def kill(self, node: str, sig: str = "KILL") -> None:
        result = self.script("kill", node, sig)
        assert result.returncode == 0, result.stderr

    def link(self, node: str, state: str) -> None:
        result = self.script("link", node, state)
        assert result.returncode == 0, result.stderr

    def link_bytes(self, node: str) -> int:
        """Bytes through ``node``'s cable so far (both directions, counted on the host end)."""
        stats = Path(f"/sys/class/net/{self.prefix}n{node[-1]}/statistics")
        return int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())

    def clean_up(self) -> None:
        """After a test: cables back in, everything the test started on the nodes killed."""
        for node in ("node1", "node2"):
            self.script("link", node, "up")
            self.script("kill", node, "KILL")
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self.procs.clear()


def next_port() -> int:
    return next(_PORTS)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        time.sleep(0.2)


@pytest.fixture(scope="session")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("multinode tier: needs root (network namespaces)")
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"multinode tier: {tool} is not installed")
    # A prefix and subnet of this session only, so a cluster of another session does not clash.
    # The state directory must be traversable by munged (user munge) for the SLURM part.
    state_dir = Path(tempfile.mkdtemp(prefix="md-two-node-"))
    state_dir.chmod(0o755)
    prefix, subnet = f"md{os.getpid() % 10000}", f"10.232.{os.getpid() % 250}"
    nodes = TwoNodes(state_dir, prefix, subnet)
    with socket.socket() as ctld:  # slurmctld listens on the machine: a port nobody holds
        ctld.bind(("", 0))
        port = str(ctld.getsockname()[1])
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state_dir)], capture_output=True,
                             text=True, timeout=120,
                             env=dict(os.environ, NET_PREFIX=prefix, SUBNET=subnet,
                                      SLURMCTLD_PORT=port))
    try:
        if started.returncode != 0:
            pytest.skip(f"multinode tier: network namespaces cannot be made here: "
                        f"{started.stderr.strip()[-300:]}")
        yield nodes
    finally:
        nodes.clean_up()
        subprocess.run(["bash", str(CLUSTER), "stop", str(state_dir)], timeout=120)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def two_nodes(cluster):
    """The session's cluster, cleaned up after the test (also when it fails)."""
    yield cluster
    cluster.clean_up()


@pytest.fixture(scope="session")
def slurm_cluster(cluster):
    """SLURM on the two nodes: slurmctld on the bridge, a slurmd in each node; the session's end
    stops them with the cluster. Skipped where SLURM is not installed (the slurm tier installs
    it with apt)."""
    # This tier runs before the slurm tier, which would install SLURM: install it the same way.
    installed = subprocess.run(["bash", str(REPO / "slurm" / "local_slurm.sh"), "install",
                                str(cluster.dir)], capture_output=True, text=True, timeout=900)
    for daemon in ("slurmctld", "slurmd", "sbatch", "munged"):
        if shutil.which(daemon) is None:
            pytest.skip(f"multinode SLURM: {daemon} is not installed and apt could not install "
                        f"it: {installed.stderr.strip()[-300:]}")
    result = cluster.script("slurm")
    if result.returncode != 0:
        pytest.skip(f"multinode SLURM: did not start: {result.stderr.strip()[-300:]}")
    return cluster.dir / "slurm.conf"
