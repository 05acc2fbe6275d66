"""A real one-node SLURM for the ``slurm`` test tier, started once per session.

``slurm/local_slurm.sh`` installs SLURM with apt when missing and starts munged, slurmctld and
slurmd as root with every file in a temporary directory; the session's end stops them. Without
root, or when install/start fails, every test of the tier is skipped with the reason.
"""

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL_SLURM = REPO / "slurm" / "local_slurm.sh"
FINISHED_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE", "PREEMPTED",
}


@dataclass
class LocalSlurm:
    """Handle on the running test cluster: submit jobs and read their state."""

    conf: Path
    host: str

    def env(self, **extra: str) -> dict:
        """Environment for clients and jobs: the cluster's config, and the repo importable."""
        environ = dict(os.environ, SLURM_CONF=str(self.conf), PYTHONPATH=str(REPO))
        environ.update(extra)
        return environ

    def run(self, *command: str, env: dict | None = None, timeout: float = 60):
        return subprocess.run(
            command, env=env or self.env(), capture_output=True, text=True, timeout=timeout
        )

    def sbatch(self, script, *options: str, env: dict | None = None, wait: bool = False,
               timeout: float = 300) -> tuple[str, int]:
        """Submit ``script`` from the repo root; return (job id, sbatch's exit status).

        With ``wait`` sbatch returns when the job is finished, requeues included, with the
        job's exit status. Timeouts are generous: the 2 cores are shared, and a loaded machine
        slows the start of every rank (importing torch) several times over.
        """
        command = ["sbatch", "--parsable", *options]
        if wait:
            command.append("--wait")
        try:
            result = subprocess.run(
                [*command, str(script)], env=env or self.env(), cwd=REPO, capture_output=True,
                text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            job_id = (e.stdout or b"").decode().strip()
            if job_id:
                self.run("scancel", job_id)
            pytest.fail(f"sbatch --wait: job {job_id or '?'} not finished after {timeout} s")
        match = re.match(r"(\d+)", result.stdout.strip())
        assert match, f"sbatch printed no job id: {result.stdout!r} {result.stderr!r}"
        return match.group(1), result.returncode

    def job(self, job_id: str) -> dict:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: str, timeout: float = 300) -> dict:
        """Poll until the job is finished (through requeues); return its final record."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in FINISHED_STATES:
                return info
            if time.monotonic() > deadline:
                self.run("scancel", job_id)
                pytest.fail(f"job {job_id} not finished after {timeout} s: {info.get('JobState')}")
            time.sleep(0.25)


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("slurm tier: needs root to run slurmctld/slurmd")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("slurm tier: SLURM is not installed and apt-get is not available")
    # munged runs as user munge and must reach its pid/socket dirs: pytest's own temp root is
    # mode 0700 (root only), so the cluster state lives in its own traversable directory.
    state_dir = Path(tempfile.mkdtemp(prefix="md-slurm-"))
    state_dir.chmod(0o755)
    # Free ports, so a cluster left running by someone else on this machine does not interfere.
    with socket.socket() as a, socket.socket() as b:
        a.bind(("", 0))
        b.bind(("", 0))
        ports = {"SLURMCTLD_PORT": str(a.getsockname()[1]), "SLURMD_PORT": str(b.getsockname()[1])}
    try:
        started = subprocess.run(
            ["bash", str(LOCAL_SLURM), "start", str(state_dir)],
            capture_output=True, text=True, timeout=900, env=dict(os.environ, **ports),
        )
    except subprocess.TimeoutExpired:
        subprocess.run(["bash", str(LOCAL_SLURM), "stop", str(state_dir)], timeout=120)
        pytest.skip("slurm tier: installing/starting SLURM took over 15 minutes")
    if started.returncode != 0:
        subprocess.run(["bash", str(LOCAL_SLURM), "stop", str(state_dir)], timeout=120)
        pytest.skip(f"slurm tier: local SLURM did not start: {started.stderr.strip()[-500:]}")
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    try:
        yield LocalSlurm(conf=state_dir / "slurm.conf", host=host)
    finally:
        subprocess.run(["bash", str(LOCAL_SLURM), "stop", str(state_dir)], timeout=120)
        shutil.rmtree(state_dir, ignore_errors=True)
