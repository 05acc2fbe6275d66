"""SLURM host list and tasks-per-node expansion (scontrol's agreement is checked in tests/slurm)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_diffusion.errors import UsageError
from megatron_diffusion.parallel.hostlist import MAX_HOSTS, expand_hostlist, expand_tasks_per_node


@pytest.mark.parametrize(
    "text, hosts",
    [
        ("node1", ["node1"]),
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("a[1-2]-ib,b7", ["a1-ib", "a2-ib", "b7"]),
        ("gpu-[001-002]x[1-2]", ["gpu-001x1", "gpu-001x2", "gpu-002x1", "gpu-002x2"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("n[001-3]", ["n001", "n002", "n003"]),  # padding follows the lower bound...
        ("n[1-03]", ["n1", "n2", "n3"]),  # ...not the upper one (as scontrol does)
        ("n[1,3-4],m[2]", ["n1", "n3", "n4", "m2"]),
        ("n[3],n[1-2]", ["n3", "n1", "n2"]),  # SLURM's order is kept: the first host is rank 0's
        ("n[1-2],n[2-3]", ["n1", "n2", "n2", "n3"]),
        ("a,,b c", ["a", "b", "c"]),
        (" x-1.cluster.org ", ["x-1.cluster.org"]),
        ("[1-2]", ["1", "2"]),
    ],
)
def test_expand_hostlist(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "empty host list"),
        (" , ", "empty host list"),
        ("n[1-3", "'[' without ']'"),
        ("n1-3]", "']' without '['"),
        ("n[1-[2]]", "nested '['"),
        ("n[3-1]", "runs backwards"),
        ("n[a-b]", "bad range 'a-b'"),
        ("n[]", "empty brackets"),
        ("n[1,,2]", "bad range ''"),
        ("n[-2]", "bad range '-2'"),
        ("n[1-2:2]", "bad range '1-2:2'"),
        ("n[0-99999999]", f"past {MAX_HOSTS}"),
        ("n[0-1023][0-1024]", f"past {MAX_HOSTS}"),
    ],
)
def test_bad_hostlist_names_the_source(text, why):
    with pytest.raises(UsageError) as info:
        expand_hostlist(text, source="SLURM_JOB_NODELIST")
    message = str(info.value)
    assert message.startswith("SLURM_JOB_NODELIST: ")
    assert why in message


# One host expression built from parts whose expansion we know: literal chunks and ranges.
_literal = st.text("abcxyz-.", min_size=0, max_size=3)
_range = st.tuples(st.integers(0, 120), st.integers(0, 5), st.integers(1, 3))  # lo, span, width


@st.composite
def _expression(draw):
    num_groups = draw(st.integers(1, 3))
    text = draw(st.text("abn", min_size=1, max_size=3))
    hosts = [text]
    for _ in range(num_groups):
        ranges = draw(st.lists(_range, min_size=1, max_size=3))
        parts, values = [], []
        for lo, span, width in ranges:
            hi = lo + span
            parts.append(f"{lo:0{width}d}" if span == 0 else f"{lo:0{width}d}-{hi}")
            values.extend(f"{n:0{width}d}" for n in range(lo, hi + 1))
        suffix = draw(_literal)
        text += "[" + ",".join(parts) + "]" + suffix
        hosts = [h + v + suffix for h in hosts for v in values]
    return text, hosts


@settings(max_examples=60, deadline=None)
@given(st.lists(_expression(), min_size=1, max_size=4))
def test_expand_hostlist_matches_construction(expressions):
    text = ",".join(t for t, _ in expressions)
    expected = [h for _, hosts in expressions for h in hosts]
    assert expand_hostlist(text) == expected


@pytest.mark.parametrize(
    "text, counts",
    [("8", [8]), ("4(x2),2", [4, 4, 2]), ("1,2(x1),3(x3)", [1, 2, 3, 3, 3])],
)
def test_expand_tasks_per_node(text, counts):
    assert expand_tasks_per_node(text) == counts


@pytest.mark.parametrize("text", ["", "4(x)", "x", "4(2)", "0", "2(x0)", "4,,2"])
def test_bad_tasks_per_node_names_the_source(text):
    with pytest.raises(UsageError, match="^SLURM_STEP_TASKS_PER_NODE: "):
        expand_tasks_per_node(text, source="SLURM_STEP_TASKS_PER_NODE")
