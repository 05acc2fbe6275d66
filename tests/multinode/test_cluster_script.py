"""slurm/two_node_cluster.sh's own contract: bad knobs and names fail in one line, exit 2."""

import os
import subprocess
import sys

import pytest

from tests.multinode.conftest import CLUSTER, REPO, node_env

pytestmark = [pytest.mark.multinode,
              pytest.mark.skipif(os.geteuid() != 0, reason="multinode tier: needs root")]


def _script(*args, **env):
    return subprocess.run(["bash", str(CLUSTER), *args], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, **env))


@pytest.mark.parametrize("env,expected", [
    ({"NET_PREFIX": "much-too-long"}, "two_node_cluster: NET_PREFIX: got 'much-too-long', "
                                      "expected 1-6 of [a-z0-9]"),
    ({"SUBNET": "10.0.0.0"}, "two_node_cluster: SUBNET: got '10.0.0.0', expected three octets"),
])
def test_bad_knobs_fail_in_one_line_before_anything_is_made(tmp_path, env, expected):
    result = _script("start", str(tmp_path / "c"), **env)
    assert result.returncode == 2 and result.stderr.startswith(expected), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c" / "hosts").exists()


def test_a_node_name_other_than_node1_or_node2_fails_in_one_line(cluster):
    result = cluster.script("exec", "node3", "true")
    assert result.returncode == 2
    assert result.stderr.strip() == "two_node_cluster: NODE: got 'node3', expected node1 or node2"


def test_nodes_have_their_own_hostname_and_address(cluster):
    for node in ("node1", "node2"):
        result = cluster.script("exec", node, "bash", "-c", "hostname -s; getent hosts node2")
        name, hosts = result.stdout.splitlines()
        assert name == node and hosts.split()[0] == cluster.address("node2")


def test_processes_on_a_node_import_this_checkout(cluster):
    """The tier's processes (and SLURM jobs, which inherit the submitting environment) get
    PYTHONPATH=<this checkout>: an installed megatron_diffusion elsewhere (an editable install of
    another checkout) must not be what runs on the nodes."""
    code = "import megatron_diffusion; print(megatron_diffusion.__file__)"
    result = subprocess.run(["bash", str(CLUSTER), "exec", str(cluster.dir), "node2", sys.executable,
                             "-c", code], cwd="/", env=node_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == str(REPO / "megatron_diffusion" / "__init__.py"), result
