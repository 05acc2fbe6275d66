"""What the sampler drives: a model forward with an exact KV cache, or any plain callable.

``ModelBackend`` wraps a ``DiffusionGPTModel`` (one TP shard): a ``kv_cache.RaggedKVCache`` is
attached to every core attention, each forward writing every row's chunk at that row's own
column offset; a pre-hook on the output layer computes logits only at the positions to predict;
vocabulary-parallel logits are all-gathered so every TP rank takes the same decisions. At TP=1,
while a session is open, it also runs megatron's linears and layers without their Python
wrappers (``single_rank_linear``, ``lean_forward``: bit-identical logits) and, on a CPU, keeps
column-major weight copies (faster batch-1 matrix-vector products; logits equal to float
rounding). docs/sampling.md "Measured" and docs/BENCHMARKS.md give what each one buys.

``CallableBackend`` adapts any ``fn(input_ids, position_ids, attention_mask) -> logits`` (the
model's forward signature; stubs in tests). It has no cache: the sampler then feeds the whole
sequence every step, which is the same computation.
"""

import contextlib

import torch

from megatron_diffusion.model.attention import attach_kv_cache
from megatron_diffusion.sampling.kv_cache import RaggedKVCache


def single_rank_linear(module):
    """``module.forward`` for inference at TP=1 (``module``: a megatron Column/Row-parallel
    linear): ``LinearWithGradAccumulationAndAsyncCommunication.forward``'s matmul and bias."""
    add_bias = module.bias is not None and not module.skip_bias_add

    def forward(input_, weight=None, runtime_gather_output=None):
        output = torch.matmul(input_, (module.weight if weight is None else weight).t())
        if add_bias:
            output = output + module.bias
        return output, module.bias if module.skip_bias_add else None

    return forward


@contextlib.contextmanager
def column_major_weights(model: torch.nn.Module, enabled: bool):
    """Swap every 2-D parameter's storage for a column-major copy for the ``with`` body."""
    if not enabled:
        yield
        return
    params = {name: p for name, p in model.named_parameters() if p.dim() == 2}
    # the copies follow the weights: a new tensor or an in-place update (loading) remakes them
    key = {name: (p.data_ptr(), p._version) for name, p in params.items()}
    cached = model.__dict__.get("_sampler_column_major")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, {name: p.data.t().contiguous().t() for name, p in params.items()})
        model.__dict__["_sampler_column_major"] = cached
    copies = cached[1]
    originals = {name: params[name].data for name in copies}
    for name, copy in copies.items():
        params[name].data = copy
    try:
        yield
    finally:
        for name, data in originals.items():
            params[name].data = data


@contextlib.contextmanager
def lean_linears(model: torch.nn.Module, tp_size: int):
    """Swap in ``single_rank_linear`` for the ``with`` body where it computes the same thing."""
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

    swapped = []
    if tp_size == 1:
        for m in model.modules():
            if type(m) in (ColumnParallelLinear, RowParallelLinear) and not (
                    m.sequence_parallel or m.explicit_expert_comm
                    or m.config.defer_embedding_wgrad_compute
                    or m.config._cpu_offloading_context is not None):
                m.forward = single_rank_linear(m)
                swapped.append(m)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward


class ModelBackend:
    """A ``DiffusionGPTModel`` as the sampler's forward, with cache and TP gather."""

    supports_cache = True

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.cache: RaggedKVCache | None = None
        self._logit_index_NB: torch.Tensor | None = None
        from megatron.core import parallel_state

        self.tp_size = parallel_state.get_tensor_model_parallel_world_size()
        from megatron_diffusion.sampling.lean_forward import supports_lean_forward

        self.lean = supports_lean_forward(model, self.tp_size)
        """Forwards run ``lean_forward`` (megatron's ops without its per-layer Python)."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @contextlib.contextmanager
    def session(self, capacity: int, use_cache: bool):
        """One generation: a fresh cache (if used) and the output-layer slicing hook."""
        self.cache = RaggedKVCache(capacity) if use_cache else None
        hook = self.model.output_layer.register_forward_pre_hook(self._keep_last_hidden)
        try:
            with column_major_weights(self.model, self.device.type == "cpu"), \
                    attach_kv_cache(self.model, self.cache), torch.inference_mode(), \
                    lean_linears(self.model, self.tp_size):
                yield self
        finally:
            hook.remove()
            self.cache = None

    def _keep_last_hidden(self, module, args):
        if self._logit_index_NB is None:
            return None
        hidden_WBH = args[0]
        index = self._logit_index_NB[:, :, None].expand(-1, -1, hidden_WBH.shape[-1])
        return (hidden_WBH.gather(0, index), *args[1:])

    def forward(self, tokens_BW, positions_BW, mask_B1WK, *, write_start_B: torch.Tensor,
                logit_index_BN: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary float32 logits ``[b, N, V]`` at chunk positions ``logit_index_BN``.

        Row ``r``'s chunk is written to the cache from column ``write_start_B[r]``; the keys
        attended are the cache's first ``mask_B1WK.shape[-1]`` columns.
        """
        if self.cache is not None:
            self.cache.write_start_B = write_start_B
            self.cache.key_len = mask_B1WK.shape[-1]
        self._logit_index_NB = logit_index_BN.T
        try:
            if self.lean:
                from megatron_diffusion.sampling.lean_forward import lean_forward

                logits_BNV = lean_forward(self.model, tokens_BW, positions_BW, mask_B1WK)
            else:
                logits_BNV = self.model(tokens_BW, positions_BW, mask_B1WK)
        finally:
            self._logit_index_NB = None
        if self.tp_size > 1:
            from megatron.core.tensor_parallel.mappings import (
                gather_from_tensor_model_parallel_region)

            logits_BNV = gather_from_tensor_model_parallel_region(logits_BNV)
        # drop the vocabulary padding (its size depends on the TP size): sampling then draws
        # the same tokens under any TP layout
        return logits_BNV[..., :self.model.real_vocab_size].float()

    def select_rows(self, index_B: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.select_batch(index_B)


class CallableBackend:
    """Any callable with the model's forward signature; recomputes the sequence every step."""

    supports_cache = False

    def __init__(self, fn, device: torch.device | str = "cpu"):
        self.fn = fn
        self.device = torch.device(device)

    @contextlib.contextmanager
    def session(self, capacity: int, use_cache: bool):
        with torch.inference_mode():
            yield self

    def forward(self, tokens_BW, positions_BW, mask_B1WK, *, write_start_B: torch.Tensor,
                logit_index_BN: torch.Tensor) -> torch.Tensor:
        logits_BWV = self.fn(tokens_BW, positions_BW, mask_B1WK)
        index = logit_index_BN[:, :, None].expand(-1, -1, logits_BWV.shape[-1])
        return logits_BWV.gather(1, index).float()

    def select_rows(self, index_B: torch.Tensor) -> None:
        pass


def as_backend(model_or_fn, device=None):
    """A ``ModelBackend`` for a module with diffusion core attention, else a ``CallableBackend``."""
    if hasattr(model_or_fn, "session") and hasattr(model_or_fn, "supports_cache"):
        return model_or_fn  # already a backend (or a wrapper of one)
    from megatron_diffusion.model.attention import DiffusionCoreAttention

    if isinstance(model_or_fn, torch.nn.Module) and any(
            isinstance(m, DiffusionCoreAttention) for m in model_or_fn.modules()):
        return ModelBackend(model_or_fn)
    return CallableBackend(model_or_fn, device or "cpu")
