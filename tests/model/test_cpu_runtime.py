"""Each CPU shim is still needed: with it off, megatron-core fails the way CPU_MEGATRON.md says.

Run in subprocesses (the shims are process-wide). If a megatron-core upgrade stops needing a
shim, its test fails and the shim can go; if an upgrade adds a new hard-coded "cuda", the
trainer tests fail.
"""

import subprocess
import sys

import pytest

from tests.helpers import ROOT

PROBE = r"""
import sys, torch, warnings
warnings.filterwarnings("ignore")
from megatron_diffusion.parallel import cpu_runtime as cr
off = sys.argv[1]
if off == "current_device":
    orig = torch.cuda.current_device
    cr.activate(); torch.cuda.current_device = orig
elif off == "redirect":
    cr.activate(); cr._MODE.__exit__(None, None, None)
elif off == "rng":
    cr.activate()
    from megatron.core.tensor_parallel import random as r
    from megatron.core.tensor_parallel.random import CudaRNGStatesTracker
    r._CUDA_RNG_STATE_TRACKER = CudaRNGStatesTracker()
elif off == "synchronize":
    orig = torch.cuda.synchronize
    cr.activate(); torch.cuda.synchronize = orig
else:
    cr.activate()
from megatron_diffusion.parallel.process_groups import initialize_model_parallel
from megatron_diffusion.model.gpt import build_model, transformer_config
import megatron_diffusion.parallel.cpu_runtime as cr2
sys.path.insert(0, ".")
from tests.helpers import tiny_model_config
if off == "rng":
    import torch.distributed as dist, os
    os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29599")
    dist.init_process_group("gloo")
    from megatron.core import parallel_state
    parallel_state.initialize_model_parallel()
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    model_parallel_cuda_manual_seed(1)
else:
    initialize_model_parallel(1, 1)
cfg = tiny_model_config(num_layers=1)
m = build_model(cfg, transformer_config(cfg))
x = torch.randint(0, 50, (1, 8))
out = m(x, torch.arange(8)[None], None)
from megatron_diffusion.loss import LossConfig
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.training.step import forward_backward
from tests.helpers import synthetic_batch
attn = AttentionConfig(mode="bidirectional")
forward_backward([m], [synthetic_batch(attn, rows=1, seq_len=8, seed=0)], attn, LossConfig(),
                 forward_only=True)  # megatron's schedules hard-code device="cuda"
if off == "synchronize":
    import tempfile
    from megatron_diffusion.training.checkpoint import save_checkpoint
    save_checkpoint(tempfile.mkdtemp(), 0, [m], None, meta={}, loader_state={})
print("OK")
"""


def _probe(off):
    return subprocess.run([sys.executable, "-c", PROBE, off], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_all_shims_on_runs():
    proc = _probe("none")
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("off,needle", [("current_device", "CUDA"), ("redirect", "CUDA"),
                                        ("rng", "CUDA"), ("synchronize", "CUDA")])
def test_each_shim_is_still_needed(off, needle):
    proc = _probe(off)
    assert proc.returncode != 0, f"megatron-core ran without the {off!r} shim: drop it?"
    assert needle in proc.stderr
