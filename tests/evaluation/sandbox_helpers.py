"""Shared helpers for the sandbox tests: a resolved config, and finding leftover processes."""

import os
import uuid

import pytest

from megatron_diffusion.errors import UsageError
from megatron_diffusion.evaluation.executor import ExecutorConfig, pids_of_uid, resolve_sandbox


def sandbox_config(**overrides) -> ExecutorConfig:
    """A small, fast config; skips the test if this machine cannot sandbox at all."""
    cfg = ExecutorConfig(**{"timeout_s": 5.0, "workers": 2, "memory_mb": 256, "cpu_s": 5, **overrides})
    try:
        resolve_sandbox(cfg)
    except UsageError as e:
        pytest.skip(f"no sandbox on this machine: {e}")
    return cfg


def new_marker() -> str:
    """A process name (<= 15 chars) to find a snippet's processes by in /proc/*/comm."""
    return "mdv" + uuid.uuid4().hex[:12]


def set_name_lines(marker: str) -> str:
    """Snippet lines that rename the process (inherited by its forks) to ``marker``."""
    return f"import ctypes\nctypes.CDLL(None).prctl(15, {marker.encode()!r}, 0, 0, 0)\n"


def processes_named(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == marker:
                    found.append(int(pid))
        except OSError:
            continue
    return found


def processes_of_uids(first: int, count: int) -> list[int]:
    return [pid for uid in range(first, first + count) for pid in pids_of_uid(uid)]
