"""``DataConfig``: which stores, blended how, packed into rows of what shape."""

from dataclasses import dataclass, field
from typing import Self

from megatron_diffusion.errors import UsageError, check_choice, check_int, check_range

MODES = ("cpt", "sft")
SPLITS = ("train", "validation")


def parse_data_path(items: list[str]) -> list[tuple[float, str]]:
    """Megatron's ``--data-path``: ``[a]`` or ``[w1, a, w2, b, ...]`` -> ``[(w, path), ...]``."""
    if len(items) == 1:
        return [(1.0, items[0])]
    if len(items) % 2:
        raise UsageError(f"--data-path: got {items}, expected one path or pairs 'WEIGHT PATH ...'")
    blend = []
    for w, p in zip(items[::2], items[1::2]):
        try:
            blend.append((float(w), p))
        except ValueError:
            raise UsageError(f"--data-path: weight {w!r} before {p!r} is not a number") from None
    return blend


@dataclass
class DataConfig:
    """What the loader reads and how it packs it: the store blend, sequence length, batch sizes,
    CPT or SFT rows, the split, loader workers and distilled trajectories (docs/data.md)."""

    blend: list[tuple[float, str]] = field(default_factory=list)
    """Stores and their weights, Megatron-style ``[(0.7, "a.zarr"), (0.3, "b.zarr")]``; weights
    are normalised. Each store contributes ``weight`` of the rows of every epoch. A store is a
    zarr store or a Megatron-LM indexed dataset's ``.bin``/``.idx`` prefix (``data/indexed.py``)."""
    tokenizer: str | None = None
    """The tokenizer.json the blend's data was tokenized with. Required when the blend names a
    Megatron indexed dataset (its files record no tokenizer): it gives the vocabulary, the EOS/
    [MASK]/pad ids and the hash the run records; zarr stores in the blend must match it."""
    indexed_validation_fraction: float = 0.0
    """Megatron indexed datasets in the blend (the format has no split): the fraction of their
    documents in the validation split, chosen by a hash of the document index as ``preprocess
    --validation-fraction`` chooses them (with its default seed). Zarr stores keep their own split."""
    seq_len: int = 2048
    """Tokens per packed row (``L``)."""
    micro_batch_size: int = 1
    """Rows per micro-batch on one data-parallel rank."""
    global_batch_size: int = 1
    """Rows per optimizer step over all DP ranks and accumulation steps (a multiple of
    ``micro_batch_size * data_parallel_size``); the step of global sample ``g`` is ``g // gbs``."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 = in the training process). Output does not
    depend on it."""
    seed: int = 1234
    """Seed of document/row shuffles, SFT EOS counts and corruption generators."""
    mode: str = "cpt"
    """``cpt`` (plain packing) or ``sft`` (prompt mask, 1-4 EOS after each sample)."""
    split: str = "train"
    """``train`` or ``validation`` documents of each store."""
    sft_min_eos: int = 1
    """SFT: fewest EOS after a sample (docs/method.md 4)."""
    sft_max_eos: int = 4
    """SFT: most EOS after a sample; the count is uniform in [min, max] per (epoch, document)."""
    index_cache_dir: str | None = None
    """Where packing indices are cached; default ``<store>.index/`` next to each store, or the
    per-user cache (``$XDG_CACHE_HOME/megatron-diffusion/index/``) for a store whose directory
    is not writable."""
    prefetch_factor: int = 2
    """Micro-batches each worker prepares ahead."""
    trajectories: str | None = None
    """A ``distill-trajectories --out`` directory: training rows are its rows (tokens and the
    selected reveal orders, shuffled per epoch) instead of packed rows of the blend; the blend
    still gives the vocabulary and the validation rows (docs/distillation.md)."""

    def validate(self) -> Self:
        self._check_blend()
        for name in ("seq_len", "micro_batch_size", "global_batch_size", "prefetch_factor"):
            check_int(f"data.{name}", getattr(self, name), lo=1)
        check_int("data.num_workers", self.num_workers, lo=0)
        check_choice("data.mode", self.mode, MODES)
        check_choice("data.split", self.split, SPLITS)
        check_int("data.sft_min_eos", self.sft_min_eos, lo=1)
        check_int("data.sft_max_eos", self.sft_max_eos, lo=self.sft_min_eos)
        check_range("data.indexed_validation_fraction", self.indexed_validation_fraction, 0, 1,
                    hi_open=True)
        if self.tokenizer is not None and not isinstance(self.tokenizer, str):
            raise UsageError(f"data.tokenizer: got {self.tokenizer!r}, expected a tokenizer.json path")
        if self.trajectories is not None and not isinstance(self.trajectories, str):
            raise UsageError(f"data.trajectories: got {self.trajectories!r}, expected a directory path")
        return self

    def _check_blend(self) -> None:
        if not self.blend:
            raise UsageError("data.blend: expected at least one (weight, store path) pair")
        for item in self.blend:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], str)):
                raise UsageError(f"data.blend: entry {item!r} is not a (weight, path) pair")
            check_range(f"data.blend weight of {item[1]}", item[0], lo=0, lo_open=True)
        paths = [p for _, p in self.blend]
        if len(set(paths)) != len(paths):
            raise UsageError(f"data.blend: a store appears twice in {paths}")

    def check_data_parallel(self, data_parallel_size: int) -> None:
        per_step = self.micro_batch_size * data_parallel_size
        if self.global_batch_size % per_step:
            raise UsageError(f"data.global_batch_size: got {self.global_batch_size}, expected a multiple "
                             f"of micro_batch_size * data_parallel_size = {per_step}")

    @property
    def weights(self) -> list[float]:
        total = sum(w for w, _ in self.blend)
        return [w / total for w, _ in self.blend]

    @property
    def paths(self) -> list[str]:
        return [p for _, p in self.blend]
