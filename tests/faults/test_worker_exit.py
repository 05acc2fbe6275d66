"""A process whose loader iterator is still alive at exit must exit (issue 13 follow-up).

The loader workers ignore SIGTERM (so a preemption reaches the trainer's step boundary), and
multiprocessing's exit hook stops daemonic children with SIGTERM and then joins them: without the
loader's own exit hook, a run whose iterator was still referenced (a trainer object, a reference
cycle) hung forever after its last step.
"""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.faults

SCRIPT = textwrap.dedent("""
    import sys
    from megatron_diffusion.data.config import DataConfig
    from megatron_diffusion.data.loader import DiffusionDataLoader
    cfg = DataConfig(blend=[(1.0, sys.argv[1])], seq_len=32, micro_batch_size=2,
                     global_batch_size=2, num_workers=1, seed=3)
    batches = iter(DiffusionDataLoader(cfg))
    next(batches)
    holder = {"batches": batches}
    holder["self"] = holder  # a cycle: nothing frees the iterator before the exit hooks run
    del batches
    print("done", flush=True)
""")


def test_exit_with_a_live_worker_iterator_does_not_hang(tiny_store, tmp_path):
    script = tmp_path / "live_iterator.py"
    script.write_text(SCRIPT)
    try:
        proc = subprocess.run([sys.executable, str(script), str(tiny_store)], capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: its loader worker ignored the exit hook's SIGTERM")
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout
