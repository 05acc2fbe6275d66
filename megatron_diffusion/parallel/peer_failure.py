"""When a peer is lost: the backend's error as one line that names the peer.

With several nodes a rank learns that another one is gone only through a failing collective:

- the peer's process died (its node crashed, was killed, ran out of memory): the kernel closes
  its sockets, and gloo raises at once with ``Connection closed by peer [ADDR]:PORT`` or ``Read
  error [ADDR]:PORT: Connection reset by peer`` (which one depends on what the rank was doing),
  naming the peer's address;
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

_GONE = re.compile(r"Connection (?:closed|reset) by peer|Broken pipe|Read error|Write error")
_ADDRESS = re.compile(r"\[([0-9A-Fa-f.:]+)\]:\d+")  # gloo's "[10.0.0.2]:41234" (not its "[file:line]")
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


def backend_detail(text: str) -> str:
    """The backend's own words, short: its first sentence without gloo's ``[file:line]``."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", first)
    first = first.split(". ")[0].rstrip(".")
    return first[:200]


def describe_peer_failure(error: BaseException, table: PeerTable | None,
                          timeout_s: float) -> str | None:
    """One line naming the lost peer and what happened, or None if ``error`` is not a lost peer.
    The backend's own words follow in parentheses."""
    line = _describe(str(error), table, timeout_s)
    return None if line is None else f"{line} (backend: {backend_detail(str(error))})"


def _describe(text: str, table: PeerTable | None, timeout_s: float) -> str | None:
    gone, address = _GONE.search(text), _ADDRESS.search(text)
    if gone and address:
        address = address.group(1)
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
    if gone:
        return "lost a peer: its connection closed (the process or its node died)"
    return None
