"""Each CPU patch of ``parallel/cpu_runtime.py`` is still needed: with it off, megatron-core fails.

Run in subprocesses (the shims are process-wide). If a megatron-core upgrade stops needing a
shim, its test fails and the shim can go; if an upgrade adds a new hard-coded "cuda", the
trainer tests fail. The shims sit at their call sites: a model forward runs through no
``TorchFunctionMode`` (it used to cost ~3.4k Python calls per SmolLM2 forward).
"""

import importlib
import inspect
import re
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
    cr.activate(); cr.redirect_cuda_literals(False)
elif off == "type_names":
    cr.activate(); torch.Tensor.type = cr._ORIGINAL["type"]
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
from megatron_diffusion.model.gpt import transformer_config
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
from megatron_diffusion.training.model_setup import build_training_model, unwrap
chunks = build_training_model(cfg, transformer_config(cfg))
m = unwrap(chunks)[0]
x = torch.randint(0, 50, (1, 8))
out = m(x, torch.arange(8)[None], None)
assert torch._C._len_torch_function_stack() == 0  # no mode: the forward pays nothing per op
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.training.forward_backward import ForwardSpec, forward_backward
from tests.helpers import synthetic_batch
attn = AttentionConfig(mode="bidirectional")
batch = [synthetic_batch(attn, rows=1, seq_len=8, seed=0)]
forward_backward(chunks, batch, ForwardSpec(attn, LossConfig()))  # the schedules hard-code device="cuda"
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=1.0), chunks)
ok, grad_norm, _ = opt.step()  # grad clipping checks param.grad.type()
assert ok and grad_norm > 0
if off == "synchronize":
    import tempfile
    from megatron_diffusion.training.checkpoint import save_checkpoint
    save_checkpoint(tempfile.mkdtemp(), 0, [m], None, meta={}, loader_state={})
print("OK")
"""


def _probe(off):
    return subprocess.run([sys.executable, "-c", PROBE, off], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


def test_all_shims_on_runs():
    proc = _probe("none")
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("off,needle", [("current_device", "CUDA"), ("redirect", "CUDA"),
                                        ("type_names", "torch.cuda.FloatTensor"), ("rng", "CUDA"),
                                        ("synchronize", "CUDA")])
def test_each_shim_is_still_needed(off, needle):
    proc = _probe(off)
    assert proc.returncode != 0, f"megatron-core ran without the {off!r} shim: drop it?"
    assert needle in proc.stderr


CUDA_LITERAL = re.compile(r"""device\s*=\s*['"]cuda['"]""")


def test_every_redirected_module_still_hard_codes_cuda():
    """Patch 2 is per module: each listed module must still build tensors on a literal
    ``device="cuda"`` (else drop it from the list)."""
    from megatron_diffusion.parallel.cpu_runtime import CUDA_LITERAL_MODULES

    for name in CUDA_LITERAL_MODULES:
        source = inspect.getsource(importlib.import_module(name))
        assert CUDA_LITERAL.search(source), f"{name} no longer hard-codes device='cuda'"


def test_tensor_cuda_shim_is_still_needed():
    """Patch 3: megatron calls ``.cuda()`` on the tied embedding with pipeline parallelism (the
    PP=2 tests run through it), and this torch has no CUDA to move it to."""
    from megatron.core.models.common.language_module import language_module

    source = inspect.getsource(language_module.LanguageModule.setup_embeddings_and_output_layer)
    assert "weight.data.cuda()" in source
    proc = subprocess.run([sys.executable, "-c", "import torch; torch.zeros(1).cuda()"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "CUDA" in proc.stderr
