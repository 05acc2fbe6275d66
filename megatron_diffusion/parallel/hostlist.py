"""Expand SLURM's compressed host lists and task counts, without calling ``scontrol``.

A host list is a comma- (or space-) separated list of host expressions. A host expression is
literal text with any number of bracket groups; each group is a comma-separated list of numbers
and ``lo-hi`` ranges, and the expression stands for the cartesian product of its groups, the first
group varying slowest::

    node[01-03,07]          node01 node02 node03 node07
    gpu-[001-002]x[1-2]     gpu-001x1 gpu-001x2 gpu-002x1 gpu-002x2
    a[1-2]-ib,b7            a1-ib a2-ib b7

A range is zero-padded to the width of its lower bound, as SLURM does (``n[098-101]`` gives
``n098 .. n101``; ``n[8-11]`` gives ``n8 .. n11``). Commas inside brackets do not split hosts.
Order and duplicates are kept, so the first host is the first host SLURM lists: the job's rank-0
node. ``scontrol show hostnames`` agrees on every form SLURM 22.05 accepts (checked in the slurm
test tier); text after the last bracket (``a[1-2]-ib``), which 22.05 rejects and later versions
emit for interface-suffixed names, is accepted here.

``SLURM_TASKS_PER_NODE`` and ``SLURM_STEP_TASKS_PER_NODE`` compress runs of equal counts as
``count(xrepeat)``: ``4(x2),2`` is ``[4, 4, 2]``.
"""

import itertools
import re

from megatron_diffusion.errors import UsageError

MAX_HOSTS = 1 << 20
"""Refuse lists that expand past this many hosts: a typo such as ``n[1-999999999]``."""

_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
_REPEAT = re.compile(r"(\d+)(?:\(x(\d+)\))?")


def _split_top_level(text: str, source: str) -> list[str]:
    """Split at commas/whitespace outside brackets; reject unbalanced or nested brackets."""
    items, current, depth = [], [], 0
    for ch in text:
        if ch == "[":
            if depth:
                raise UsageError(f"{source}: nested '[' in host list {text!r}")
            depth = 1
        elif ch == "]":
            if not depth:
                raise UsageError(f"{source}: ']' without '[' in host list {text!r}")
            depth = 0
        elif depth == 0 and (ch == "," or ch.isspace()):
            items.append("".join(current))
            current = []
            continue
        current.append(ch)
    if depth:
        raise UsageError(f"{source}: '[' without ']' in host list {text!r}")
    items.append("".join(current))
    return [item for item in items if item]


def _expand_group(group: str, text: str, source: str) -> list[str]:
    """``01-03,7`` -> ``['01', '02', '03', '7']``."""
    values = []
    for part in group.split(","):
        match = _RANGE.fullmatch(part)
        if match is None:
            raise UsageError(
                f"{source}: bad range {part!r} in host list {text!r}, expected N or LO-HI"
            )
        lo_text, hi_text = match.group(1), match.group(2)
        lo, hi = int(lo_text), int(hi_text if hi_text is not None else lo_text)
        if hi < lo:
            raise UsageError(f"{source}: range {part!r} runs backwards in host list {text!r}")
        if len(values) + hi - lo + 1 > MAX_HOSTS:
            raise UsageError(f"{source}: host list {text!r} expands past {MAX_HOSTS} hosts")
        width = len(lo_text)
        values.extend(str(n).zfill(width) for n in range(lo, hi + 1))
    return values


def _expand_expression(expr: str, text: str, source: str) -> list[str]:
    # Alternate literal text and bracket contents: "gpu-[1-2]x[3]" -> ["gpu-", "1-2", "x", "3", ""]
    pieces = re.split(r"\[([^\]]*)\]", expr)
    choices = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            choices.append([piece])
        elif piece == "":
            raise UsageError(f"{source}: empty brackets in host list {text!r}")
        else:
            choices.append(_expand_group(piece, text, source))
    size = 1
    for options in choices:
        size *= len(options)
    if size > MAX_HOSTS:
        raise UsageError(f"{source}: host list {text!r} expands past {MAX_HOSTS} hosts")
    return ["".join(parts) for parts in itertools.product(*choices)]


def expand_hostlist(text: str, source: str = "host list") -> list[str]:
    """Expand a SLURM host list into host names, in SLURM's order.

    ``source`` names where the text came from (e.g. ``"SLURM_JOB_NODELIST"``) in the
    ``UsageError`` raised for malformed or empty input.
    """
    hosts: list[str] = []
    for expr in _split_top_level(text, source):
        hosts.extend(_expand_expression(expr, text, source))
        if len(hosts) > MAX_HOSTS:
            raise UsageError(f"{source}: host list {text!r} expands past {MAX_HOSTS} hosts")
    if not hosts:
        raise UsageError(f"{source}: empty host list {text!r}")
    return hosts


def expand_tasks_per_node(text: str, source: str = "tasks per node") -> list[int]:
    """``"4(x2),2"`` -> ``[4, 4, 2]``: SLURM's compressed per-node task counts."""
    counts: list[int] = []
    for part in text.strip().split(","):
        match = _REPEAT.fullmatch(part.strip())
        if match is None:
            raise UsageError(f"{source}: bad entry {part!r} in {text!r}, expected N or N(xR)")
        count, repeat = int(match.group(1)), int(match.group(2) or 1)
        if count < 1 or repeat < 1:
            raise UsageError(f"{source}: counts must be >= 1, got {part!r} in {text!r}")
        if len(counts) + repeat > MAX_HOSTS:
            raise UsageError(f"{source}: {text!r} expands past {MAX_HOSTS} nodes")
        counts.extend([count] * repeat)
    return counts
