"""Run megatron-core on CPU over gloo (tests, the CPU demo). Active only when CUDA is absent.

megatron-core has no CPU mode: ~100 sites build tensors on ``torch.cuda.current_device()``, some
hard-code ``"cuda"``, grad clipping and the optimizers check ``Tensor.type()`` names, and the
tensor-parallel RNG tracker forks the CUDA generator. Six patches make it run, each at the call
sites that need it (nothing per op: the forward runs plain torch): (1)
``torch.cuda.current_device()`` is the CPU; (2) the modules that hard-code ``device="cuda"``
(``CUDA_LITERAL_MODULES``) see a ``torch`` proxy that builds on the CPU; (3) ``Tensor.cuda()``
returns the tensor; (4) ``Tensor.type()`` of a CPU tensor reports the ``torch.cuda.*Tensor`` name;
(5) megatron's RNG tracker forks the CPU generator; (6) ``torch.cuda.synchronize()`` is a no-op.
tests/parallel/test_cpu_runtime.py keeps a test per patch showing it is still needed, so a
megatron-core upgrade that drops or adds a site shows up as a failing test. Also needed, as
configuration (``model/gpt.py``): ``batch_p2p_comm=False`` on CPU (gloo's batched isend/irecv
raced in the interleaved pipeline schedule).

Nothing here runs when CUDA is available: ``activate()`` returns False and changes nothing.
"""

import contextlib
import functools
import importlib
import types

import torch

_ACTIVE = False

CUDA_LITERAL_MODULES = (
    "megatron.core.pipeline_parallel.schedules",  # total_num_tokens in every schedule
    "megatron.core.optimizer.optimizer",  # found_inf, _scale_one, _dummy_overflow_buf
    "megatron.core.optimizer.clip_grads",  # total norm, overflow buffer, zero count
    "megatron.core.optimizer.grad_scaler",  # loss scale (fp16)
    "megatron.core.utils",  # local_multi_tensor_l2_norm (the grad norm)
    "megatron.core.transformer.utils",  # the default causal mask
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",  # save-plan reuse check
    "megatron.core.dist_checkpointing.exchange_utils",  # fully parallel load exchange
    "megatron.core.tensor_parallel.data",  # broadcast_data
)
"""Modules whose source builds tensors with a literal ``device="cuda"`` on our code paths."""

_ORIGINAL = {}


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


def _cpu_type_name(name: str) -> str:
    return name.replace("torch.cuda.", "torch.")


def _on_cpu(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = torch.device("cpu")
        return fn(*args, **kwargs)

    return call


class CpuDeviceTorch(types.ModuleType):
    """Patch 2: ``torch`` as one megatron module sees it; ``device="cuda"`` lands on the CPU.

    Only the module's own ``torch.<function>(...)`` calls go through here (a few per training
    step); attributes are looked up once and then cached on the proxy.
    """

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        value = getattr(torch, name)
        if isinstance(value, (types.BuiltinFunctionType, types.FunctionType)):
            value = _on_cpu(value)
        setattr(self, name, value)
        return value


def _tensor_cuda(self, device=None, non_blocking=False, memory_format=None):
    """Patch 3: ``Tensor.cuda()`` keeps the tensor where it is (on the CPU)."""
    return self


def _tensor_type(self, dtype=None, non_blocking=False, **kwargs):
    """Patch 4: CPU tensors report CUDA type names; CUDA type names convert to CPU types."""
    original = _ORIGINAL["type"]
    if dtype is None and not kwargs:
        name = original(self)
        return name.replace("torch.", "torch.cuda.", 1) if "cuda" not in name else name
    if isinstance(dtype, str):
        dtype = _cpu_type_name(dtype)
    return original(self, dtype, non_blocking, **kwargs)


def redirect_cuda_literals(on: bool = True) -> None:
    """Install (``on``) or remove patch 2 in ``CUDA_LITERAL_MODULES``."""
    for name in CUDA_LITERAL_MODULES:
        module = importlib.import_module(name)
        module.torch = CpuDeviceTorch() if on else torch


def patch_tensor_methods(on: bool = True) -> None:
    """Install (``on``) or remove patches 3 and 4 on ``torch.Tensor``."""
    _ORIGINAL.setdefault("cuda", torch.Tensor.cuda)
    _ORIGINAL.setdefault("type", torch.Tensor.type)
    torch.Tensor.cuda = _tensor_cuda if on else _ORIGINAL["cuda"]
    torch.Tensor.type = _tensor_type if on else _ORIGINAL["type"]


class CPURNGStatesTracker:
    """Patch 5: ``CudaRNGStatesTracker``'s interface over the CPU generator."""

    def __init__(self, *args, **kwargs):
        self.reset()

    def is_initialized(self):
        return self._is_initialized

    def reset(self):
        self._is_initialized = False
        self.states_ = {}
        self.seeds_ = set()

    def get_states(self):
        return dict(self.states_)

    def set_states(self, states):
        self._is_initialized = True
        self.states_ = dict(states)

    def add(self, name, seed):
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self.seeds_.add(seed)
        gen = torch.Generator().manual_seed(seed)
        self.states_[name] = gen.get_state()

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        orig = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)


def activate() -> bool:
    """Apply the CPU patches once per process; a no-op (returns False) when CUDA is present."""
    global _ACTIVE
    if torch.cuda.is_available():
        return False
    if _ACTIVE:
        return True
    torch.cuda.current_device = lambda: torch.device("cpu")  # patch 1
    torch.cuda.synchronize = lambda device=None: None  # patch 6
    redirect_cuda_literals()  # patch 2
    patch_tensor_methods()  # patches 3 and 4
    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random._CUDA_RNG_STATE_TRACKER = CPURNGStatesTracker()  # patch 5
    mcore_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    _ACTIVE = True
    return True


def model_parallel_manual_seed(seed: int) -> None:
    """``model_parallel_cuda_manual_seed`` for either device: same seed layout as megatron.

    Data-parallel state gets ``seed``; tensor-parallel state ``seed + 2718 + tp_rank`` (so TP
    ranks draw different dropout masks, as megatron does).
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as mcore_random

    torch.manual_seed(seed)
    if not _ACTIVE:
        mcore_random.model_parallel_cuda_manual_seed(seed)
        return
    tracker = mcore_random.get_cuda_rng_tracker()
    tracker.reset()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tracker.add(mcore_random._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mcore_random._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + tp_rank)
    tracker.add(mcore_random._EXPERT_PARALLEL_RNG_TRACKER_NAME, seed + 1024 + 100 * 0 + tp_rank)
