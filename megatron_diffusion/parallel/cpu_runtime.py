"""Run megatron-core on CPU over gloo (tests, the CPU demo). Active only when CUDA is absent.

megatron-core has no CPU mode: ~100 sites build tensors on ``torch.cuda.current_device()``, some
hard-code ``"cuda"``, grad clipping and the optimizers check ``Tensor.type()`` names, and the
tensor-parallel RNG tracker forks the CUDA generator. Four process-wide patches make it run
(measured one by one in shared/docs/CPU_MEGATRON.md; tests/parallel/test_cpu_runtime.py keeps a
test per patch showing it is still needed, so an upgrade that adds a new hard-coded ``"cuda"``
shows up as a failure):

1. ``torch.cuda.current_device()`` returns ``torch.device("cpu")``.
2. A ``TorchFunctionMode`` rewrites ``device="cuda"`` (or a bare int ordinal), ``.cuda()`` and
   ``.to("cuda")`` to CPU.
3. Inside that mode ``Tensor.type()`` of a CPU tensor reports the ``torch.cuda.*Tensor`` name.
4. An RNG tracker with ``CudaRNGStatesTracker``'s interface that forks the CPU generator,
   installed as megatron's module-level tracker (``model_parallel_cuda_manual_seed`` would call
   ``torch.cuda.get_rng_state()``).
5. ``torch.cuda.synchronize()`` is a no-op: ``dist_checkpointing``'s file writer calls it
   before copying tensors (``strategies/filesystem_async.py``); CPU work is already synchronous.

Also needed, as configuration (``model/gpt.py``): ``batch_p2p_comm=False`` on CPU — gloo's
batched isend/irecv raced in the interleaved pipeline schedule (micro-batches past the warm-up
diverged).

Nothing here runs when CUDA is available: ``activate()`` returns False and changes nothing.
"""

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_ACTIVE = False
_MODE = None


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


def _cpu_type_name(name: str) -> str:
    return name.replace("torch.cuda.", "torch.")


class CudaToCpuMode(TorchFunctionMode):
    """Patches 2 and 3: every request for a CUDA device lands on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type:
            if len(args) == 1 and not kwargs:
                name = func(*args)
                return name.replace("torch.", "torch.cuda.", 1) if "cuda" not in name else name
            args = list(args)
            if len(args) > 1 and isinstance(args[1], str):
                args[1] = _cpu_type_name(args[1])
            if isinstance(kwargs.get("dtype"), str):
                kwargs["dtype"] = _cpu_type_name(kwargs["dtype"])
            return func(*args, **kwargs)
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = torch.device("cpu")
        if func in (torch.Tensor.to, torch.Tensor.new_empty, torch.Tensor.new_zeros) or (
            getattr(func, "__name__", "") == "to"
        ):
            args = tuple(
                torch.device("cpu") if i > 0 and _is_cuda_device(a) and not isinstance(a, int)
                else a
                for i, a in enumerate(args)
            )
        return func(*args, **kwargs)


class CPURNGStatesTracker:
    """Patch 4: ``CudaRNGStatesTracker``'s interface over the CPU generator."""

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
    global _ACTIVE, _MODE
    if torch.cuda.is_available():
        return False
    if _ACTIVE:
        return True
    torch.cuda.current_device = lambda: torch.device("cpu")  # patch 1
    torch.cuda.synchronize = lambda device=None: None  # patch 5
    _MODE = CudaToCpuMode()
    _MODE.__enter__()  # patches 2 and 3, for the rest of the process
    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random._CUDA_RNG_STATE_TRACKER = CPURNGStatesTracker()  # patch 4
    mcore_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    _ACTIVE = True
    return True


def is_active() -> bool:
    return _ACTIVE


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
