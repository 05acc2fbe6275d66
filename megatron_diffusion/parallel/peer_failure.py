"""When a peer is lost: the backend's error as one line that names the peer.

With several nodes a rank learns that another one is gone only through a failing collective:

- the peer's process died (its node crashed, was killed, ran out of memory): the kernel closes
  its sockets, and gloo raises at once with ``Connection closed by peer [ADDR]:PORT`` (or
  ``Connection reset by peer``), which names the peer's address;
- the peer stopped answering (its link went down, its node froze): nothing arrives, and gloo
  raises ``Timed out waiting NNNms for recv operation`` after ``parallel.collective_timeout_s``
  without naming anyone; NCCL's watchdog reports ``collective operation timeout``.

``PeerTable`` records which host each rank runs on (one all-gather at start-up), so both cases
can name the node: the address's host name (reverse lookup, /etc/hosts or DNS), or, for a
timeout, the other hosts of the job. ``describe_peer_failure`` returns the line, or None for an
error that is not about a peer (which then propagates unchanged).
"""

import re
import socket
from dataclasses import dataclass

from megatron_diffusion.errors import UsageError

_CLOSED = re.compile(r"Connection (?:closed|reset) by peer \[([^\]]+)\]:(\d+)")
_RESET = re.compile(r"Connection reset by peer|Broken pipe|Connection refused")
_TIMEOUT = re.compile(r"Timed out waiting (\d+)ms|collective operation timeout|"
                      r"Watchdog caught|NCCL communicator was aborted")


class PeerLost(UsageError):
    """A collective failed because a peer died or stopped answering: one line, exit 2 (like a
    dead loader worker). The last complete checkpoint is intact; ``--resume auto`` goes on."""


@dataclass(frozen=True)
class PeerTable:
    """The host of every rank, by rank, and this process's rank."""

    hosts: tuple[str, ...]
    rank: int

    @classmethod
    def gather(cls) -> "PeerTable":
        """All-gather ``socket.gethostname()`` over the default group (a collective)."""
        import torch.distributed as dist

        hosts = [None] * dist.get_world_size()
        dist.all_gather_object(hosts, socket.gethostname())
        return cls(tuple(hosts), dist.get_rank())

    def ranks_on(self, host: str) -> list[int]:
        short = host.split(".")[0]
        return [r for r, h in enumerate(self.hosts) if h.split(".")[0] == short]

    def other_hosts(self) -> list[str]:
        mine = self.hosts[self.rank]
        return sorted({h for h in self.hosts if h != mine})

    def name(self, host: str) -> str:
        """``node2 (ranks 2, 3)``, or the bare host when no rank runs there."""
        ranks = self.ranks_on(host)
        if not ranks:
            return host
        return f"{host} (rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))})"


def host_of(address: str) -> str:
    """The host name of an IP address (reverse lookup), else the address itself."""
    try:
        return socket.gethostbyaddr(address)[0].split(".")[0]
    except OSError:
        return address


def describe_peer_failure(error: BaseException, table: PeerTable | None,
                          timeout_s: float) -> str | None:
    """One line naming the lost peer and what happened, or None if ``error`` is not a lost peer."""
    text = str(error)
    closed = _CLOSED.search(text)
    if closed:
        address = closed.group(1)
        host = host_of(address)
        who = table.name(host) if table else host
        if host != address:
            who = f"{who} [{address}]"
        return f"lost peer {who}: its connection closed (the process or its node died)"
    if _TIMEOUT.search(text):
        others = table.other_hosts() if table else []
        who = ", ".join(table.name(h) for h in others) if others else "a rank on this host"
        return (f"lost peer {who}: no answer within parallel.collective_timeout_s={timeout_s:g} s "
                "(its node is down, frozen or cut off)")
    if _RESET.search(text):
        return "lost a peer: connection reset (the process or its node died)"
    return None
