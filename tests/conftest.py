"""Fixtures shared across test packages."""

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from tests.helpers import make_tokenizer


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """A small real store: the interpreter's json/ and email/ packages."""
    import sysconfig

    from megatron_diffusion.data.ingest import IngestConfig, preprocess

    d = tmp_path_factory.mktemp("store")
    tok = make_tokenizer(d / "tokenizer.json", 300)
    lib = Path(sysconfig.get_paths()["stdlib"])
    preprocess(IngestConfig(inputs=[str(lib / "json"), str(lib / "email")], output=str(d / "s.zarr"),
                            tokenizer=str(tok), glob="*.py", validation_fraction=0.1))
    return d / "s.zarr"




LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "GROUP_RANK", "TORCHELASTIC_RESTART_COUNT",
                 # cli.main() in-process, its stderr captured, turns third-party bars off
                 "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")


SESSION_LAUNCHER_ENV = {k: os.environ.get(k) for k in LAUNCHER_VARS}
"""The launcher variables as the session started. Restored to these, not to a module's start:
a session-scoped fixture that starts a process group (a model conversion) runs before the first
module that asks for it saves anything, and its exports (MASTER_PORT=0) would be kept forever
and reach every later subprocess and SLURM job."""


@pytest.fixture(autouse=True, scope="module")
def _no_process_group_leaks_between_modules():
    """Tests that start torch.distributed in-process (one-rank megatron models) leave it to this
    teardown, so every test module starts without a live process group, and without the launcher
    variables start_process_group exports (they would leak into subprocesses and SLURM jobs)."""
    yield
    for k, v in SESSION_LAUNCHER_ENV.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        from megatron_diffusion.parallel.process_groups import destroy

        destroy()


def pytest_sessionfinish(session, exitstatus):
    """Fail a run that leaves a multiprocessing child behind, and kill it so the run can exit.

    Interpreter exit joins every daemonic child; one that ignores SIGTERM (a loader worker) kept
    the process alive after the suite had passed, until CI's time limit.
    """
    left = multiprocessing.active_children()
    names = ", ".join(f"{child.name} (pid {child.pid})" for child in left)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would raise for a killed worker
    for child in left:
        child.kill()
        child.join(timeout=5)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line(f"\nFAILED: tests left multiprocessing children running (killed): {names}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
