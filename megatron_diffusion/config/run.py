"""The run configuration: one small dataclass per concern, composed under section names.

Each concern's config lives next to its code (``ModelConfig`` in ``model/``, ``DataConfig`` in
``data/``, ...); ``RunConfig`` composes them, and ``config/loader.py`` builds one from YAML and
overrides (defaults < YAML < overrides).

One validation contract: every section has ``validate(self) -> Self`` (no arguments; it checks
its own values with the ``errors.check_*`` helpers and returns itself), and ``RunConfig.validate``
runs every section's, then every check that needs two sections (block size divides
``data.seq_len``, TP divides the heads, the AR loss needs a causal clean stream, context
parallelism's sizes, ...). A config is validated once, when it is built or loaded; nothing on the
forward path re-validates it.
"""

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Self


from megatron_diffusion.corruption.config import CorruptionConfig
from megatron_diffusion.data.config import DataConfig
from megatron_diffusion.errors import UsageError, check_choice, check_int, check_range
from megatron_diffusion.loss.config import LossConfig
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model.backends import require_deepspeed
from megatron_diffusion.model.config import ModelConfig

LR_DECAY_STYLES = ("cosine", "wsd", "constant", "linear")
WANDB_MODES = ("off", "offline", "online")
STEP_SOURCES = ("corpus", "onpolicy")
"""``training.step_source`` values; the ``train`` entry point maps each to its class."""


@dataclass
class ParallelConfig:
    """How the model is split over ranks (tensor, pipeline, context parallel sizes; megatron's
    names) and how long a collective waits for a peer."""

    tensor_model_parallel_size: int = 1
    """Tensor (intra-layer) model parallel size (megatron's name)."""
    pipeline_model_parallel_size: int = 1
    """Pipeline stages."""
    context_parallel_size: int = 1
    """Context parallel size (megatron's name): every row's model tokens split over this many
    ranks. Ours is the all-to-all (DeepSpeed-Ulysses) kind, not TE's ring attention; it needs the
    deepspeed extra (parallel/context_parallel.py)."""
    virtual_pipeline_model_parallel_size: int | None = None
    """Model chunks per pipeline rank (interleaved 1F1B); None = no interleaving."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (with TP > 1, GPU)."""
    use_distributed_optimizer: bool = False
    """Shard optimizer state over data-parallel ranks (ZeRO-1)."""
    recompute_activations: bool = False
    """Full activation recomputation (memory for compute)."""
    collective_timeout_s: float = 600.0
    """Seconds a collective (and the process-group start-up) may wait for a peer before the rank
    fails, for gloo and NCCL alike: every process group gets it (torch's default group and
    megatron's TP/PP/DP groups). It bounds how long the surviving ranks hang when a node dies or
    its link goes down (torch's default is 30 minutes). Set it above the longest gap between two
    collectives (a checkpoint save, a validation pass, the first step's compilation); see
    docs/slurm.md "Node faults"."""

    def validate(self) -> Self:
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size",
                     "context_parallel_size"):
            check_int(f"parallel.{name}", getattr(self, name), lo=1)
        check_range("parallel.collective_timeout_s", self.collective_timeout_s, lo=0, lo_open=True)
        vpp = self.virtual_pipeline_model_parallel_size
        if vpp is not None:
            check_int("parallel.virtual_pipeline_model_parallel_size", vpp, lo=2)
            if self.pipeline_model_parallel_size < 2:
                raise UsageError(f"parallel.virtual_pipeline_model_parallel_size: got {vpp}, "
                                 "expected null with pipeline_model_parallel_size=1 (interleaving "
                                 "needs >= 2 pipeline stages)")
        return self


@dataclass
class AdamWConfig:
    """AdamW and its learning-rate schedule: linear warmup, then cosine, linear, constant or WSD
    decay."""

    lr: float = 3e-4
    """Peak learning rate."""
    min_lr: float = 3e-5
    """Final learning rate of the decay."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    lr_warmup_steps: int = 100
    """Linear warmup steps."""
    lr_decay_style: str = "cosine"
    """After warmup: 'cosine', 'linear', 'constant' or 'wsd' (warmup-stable-decay)."""
    wsd_decay_fraction: float = 0.1
    """WSD: fraction of training spent in the final (linear) decay."""

    def validate(self) -> Self:
        check_choice("optimizer.lr_decay_style", self.lr_decay_style, LR_DECAY_STYLES)
        check_range("optimizer.lr", self.lr, lo=0, lo_open=True)
        check_range("optimizer.min_lr", self.min_lr, lo=0, hi=self.lr)
        check_int("optimizer.lr_warmup_steps", self.lr_warmup_steps, lo=0)
        check_range("optimizer.clip_grad", self.clip_grad, lo=0)
        check_range("optimizer.wsd_decay_fraction", self.wsd_decay_fraction, 0, 1, lo_open=True)
        return self


@dataclass
class TrainingConfig:
    """The training loop: its length, logging, validation and checkpoint cadence, seeds and
    loggers."""

    step_source: str = "corpus"
    """What each step consumes and learns from (training/step_source.py): ``corpus`` (corrupted
    rows of ``data.blend``: CPT, SFT, the AR stage) or ``onpolicy`` (the model's own samples;
    needs the ``onpolicy`` section, docs/onpolicy.md)."""
    train_iters: int = 1000
    """Optimizer steps; the curriculum (corruption warmup, edit stage) is laid out over them."""
    log_interval: int = 10
    """Steps between metrics.jsonl lines (and wandb points)."""
    eval_interval: int = 200
    """Steps between validation losses (0 = never)."""
    eval_iters: int = 4
    """Micro-batches per validation."""
    infill_eval_interval: int = 0
    """Steps between infill evaluations on the validation split (0 = never)."""
    save_interval: int = 500
    """Steps between checkpoints (0 = only at the end / on preemption)."""
    keep_last: int = 3
    """Complete checkpoints kept (older ones deleted)."""
    max_nan_steps: int = 5
    """Consecutive non-finite losses tolerated (steps skipped) before the run stops."""
    tokenizer: str | None = None
    """tokenizer.json used for samples and copied into checkpoints (default: the store's)."""
    wandb: str = "offline"
    """'off', 'offline' (default; also when no WANDB_API_KEY) or 'online'."""
    wandb_project: str = "megatron-diffusion"
    tensorboard: bool = False
    """Also write TensorBoard events (needs the tensorboard extra)."""
    seed: int = 1234
    """Model initialisation and dropout seed."""
    layout_independent_init: bool = False
    """Initialise weights from (seed, tensor name) so every TP/PP layout starts from the same
    model (deterministic debug runs, layout comparisons); debug-sized models only."""
    exit_interval: int = 0
    """Save and exit 0 after this many steps of this process (Megatron's --exit-interval; for
    testing resume). 0 = off."""

    def validate(self) -> Self:
        for name in ("train_iters", "log_interval", "keep_last"):
            check_int(f"training.{name}", getattr(self, name), lo=1)
        for name in ("eval_interval", "eval_iters", "save_interval", "infill_eval_interval",
                     "max_nan_steps", "exit_interval"):
            check_int(f"training.{name}", getattr(self, name), lo=0)
        check_choice("training.wandb", self.wandb, WANDB_MODES)
        check_choice("training.step_source", self.step_source, STEP_SOURCES)
        if self.infill_eval_interval > 0 and self.eval_iters == 0:
            raise UsageError(f"training.infill_eval_interval: got {self.infill_eval_interval}, "
                             "which needs training.eval_iters >= 1 (the validation micro-batches "
                             "it evaluates), got 0")
        return self


@dataclass
class RunConfig:
    """A whole run: one section per concern, built by ``config/loader.py`` and validated once."""

    model: ModelConfig = field(default_factory=ModelConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: AdamWConfig = field(default_factory=AdamWConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    explicit_keys: frozenset[str] | None = field(default=None, repr=False, compare=False,
                                                 metadata={"section": False})
    """The ``section.field`` keys the YAML, a stage or an override set (``load_config`` records
    them; ``--init-from`` adopts only the others). None for a config built in code. Not a section:
    ``to_dict`` leaves it out."""

    @classmethod
    def sections(cls) -> list[str]:
        """The section names, in order (every field but ``explicit_keys``)."""
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get("section", True)]

    def validate(self) -> Self:
        """Check every section (its own ``validate()``), then the constraints between them."""
        for name in self.sections():
            with _in_section(name):
                getattr(self, name).validate()
        with _in_section("attention"):
            self.attention.check_seq_len(self.data.seq_len, "data.seq_len")
        self.model.check_tensor_parallel(self.parallel.tensor_model_parallel_size)
        if self.model.max_position_embeddings < self.data.seq_len:
            raise UsageError(f"model.max_position_embeddings: {self.model.max_position_embeddings}"
                             f" is shorter than data.seq_len={self.data.seq_len}")
        self._check_objective()
        self._check_context_parallel()
        return self

    def _check_objective(self) -> None:
        attn = self.attention
        if self.loss.objective == "ar" and attn.mode != "causal":
            raise UsageError("loss.objective: 'ar' needs attention.mode=causal")
        if self.loss.ar_loss_weight > 0 and (attn.mode != "block" or attn.clean_stream != "causal"):
            raise UsageError("loss.ar_loss_weight: an AR loss on the clean stream needs "
                             "attention.mode=block with attention.clean_stream=causal")

    def _check_context_parallel(self) -> None:
        """``parallel.context_parallel_size > 1`` (parallel/context_parallel.py): CP divides the
        query heads per TP rank and the row's model tokens, attention backend not 'te', DeepSpeed
        installed."""
        cp = self.parallel.context_parallel_size
        if cp == 1:
            return
        tp, model = self.parallel.tensor_model_parallel_size, self.model
        heads = model.num_attention_heads // tp
        if heads % cp:
            raise UsageError(f"parallel.context_parallel_size: {cp} must divide the query heads "
                             f"per tensor-parallel rank (model.num_attention_heads="
                             f"{model.num_attention_heads} / tensor_model_parallel_size={tp} = "
                             f"{heads})")
        tokens = self.attention.sequence_length(self.data.seq_len)
        if tokens % cp:
            raise UsageError(f"parallel.context_parallel_size: {cp} must divide the {tokens} model"
                             f" tokens of a row (data.seq_len={self.data.seq_len}, attention.mode="
                             f"{self.attention.mode!r})")
        if model.attention_backend == "te":
            raise UsageError("model.attention_backend: 'te' cannot run under context parallelism "
                             "(Ulysses wraps our core attention); use 'sdpa' or 'flex'")
        require_deepspeed(f"parallel.context_parallel_size={cp}")

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in self.sections()}

    def is_explicit(self, key: str) -> bool:
        """Did the YAML or an override set ``section.field``? (``load_config`` records the keys;
        for a config built otherwise, a value that differs from the default counts as set.)"""
        if self.explicit_keys is not None:
            return key in self.explicit_keys
        section_name, _, name = key.partition(".")
        section = getattr(self, section_name)
        return getattr(section, name) != getattr(type(section)(), name)


@contextlib.contextmanager
def _in_section(name: str):
    """Prefix a section's field names with ``name.`` in its ``UsageError`` (sections that also
    stand alone, e.g. ``AttentionConfig`` for ``show-mask``, name their fields bare)."""
    try:
        yield
    except UsageError as e:
        msg = str(e)
        raise UsageError(msg if msg.startswith(f"{name}.") else f"{name}.{msg}") from None
