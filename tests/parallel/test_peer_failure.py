"""A lost peer as one line: gloo's and NCCL's errors mapped to the node that went away."""

import pytest
import torch
import torch.distributed as dist

from megatron_diffusion.parallel.peer_failure import (PeerTable, backend_detail,
                                                       describe_peer_failure, host_of)
from megatron_diffusion.parallel.process_groups import destroy, ensure_distributed

# What torch 2.13's gloo raised on node1 when node2's processes were killed (two forms, by what
# the rank was doing), and when node2's link went down (tests/multinode, from their logs; the
# port and line numbers of the reset form are illustrative).
CLOSED = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection "
          "closed by peer [10.231.7.2]:11904. This is typically caused by a remote worker crashing.")
RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:538] Read error "
         "[10.231.7.2]:40710: Connection reset by peer")
TIMED_OUT = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] "
             "Timed out waiting 15000ms for recv operation to complete")
TABLE = PeerTable(hosts=("node1", "node1", "node2", "node2"), rank=0)


def test_a_closed_connection_names_the_peer_host_its_ranks_and_address(monkeypatch):
    monkeypatch.setattr("socket.gethostbyaddr", lambda a: ("node2", [], [a]))
    for text in (CLOSED, RESET):
        line = describe_peer_failure(RuntimeError(text), TABLE, 15)
        assert line.startswith("lost peer node2 (ranks 2, 3) [10.231.7.2]: its connection "
                               "closed (the process or its node died) (backend: ")


def test_an_address_without_a_name_is_named_by_the_address(monkeypatch):
    def no_name(address):
        raise OSError("unknown host")

    monkeypatch.setattr("socket.gethostbyaddr", no_name)
    assert host_of("10.231.7.2") == "10.231.7.2"
    assert describe_peer_failure(RuntimeError(CLOSED), TABLE, 15).startswith(
        "lost peer 10.231.7.2: its connection closed")


def test_a_timeout_names_the_other_hosts_and_the_config_field():
    line = describe_peer_failure(RuntimeError(TIMED_OUT), TABLE, 15)
    assert line == ("lost peer node2 (ranks 2, 3): no answer within "
                    "parallel.collective_timeout_s=15 s (its node is down, frozen or cut off) "
                    "(backend: Timed out waiting 15000ms for recv operation to complete)")
    nccl = RuntimeError("[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(...)")
    one_host = PeerTable(hosts=("node1", "node1"), rank=1)
    assert "lost peer a rank on this host" in describe_peer_failure(nccl, one_host, 600)


def test_the_backend_detail_is_its_first_sentence_without_the_source_location():
    assert backend_detail(CLOSED) == "Connection closed by peer [10.231.7.2]:11904"
    assert backend_detail("") == ""


def test_other_errors_are_not_a_lost_peer():
    assert describe_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
                                 TABLE, 15) is None


def test_the_collective_timeout_reaches_the_default_group():
    ensure_distributed(collective_timeout_s=12.5)  # torch's own default would be 30 minutes
    try:
        backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
        assert backend.options._timeout.total_seconds() == pytest.approx(12.5)
        table = PeerTable.gather()
        assert table.rank == 0 and len(table.hosts) == 1
    finally:
        destroy()
