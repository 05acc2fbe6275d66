"""The run configuration: one small dataclass per concern, composed; defaults < YAML < overrides.

Each concern's config lives next to its code (``ModelConfig`` in ``model/``, ``DataConfig`` in
``data/``, ...). ``RunConfig`` composes them under section names, and ``load_config`` builds one
from a YAML file and ``section.field=value`` overrides (values parsed as YAML: ``3``, ``1e-4``,
``null``, ``[1, 2]``). Unknown sections or keys and values of the wrong type fail before any work,
with the key's dotted name and what was expected.

One validation contract: every section has ``validate(self) -> Self`` (no arguments; it checks
its own values with the ``errors.check_*`` helpers and returns itself), and ``RunConfig.validate``
runs every section's, then every check that needs two sections (block size divides
``data.seq_len``, TP divides the heads, the AR loss needs a causal clean stream, context
parallelism's sizes, ...). A config is validated once, when it is built or loaded; nothing on the
forward path re-validates it.
"""

import contextlib
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import yaml

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
                                 "needs >= 2 stages)")
        return self


@dataclass
class OptimizerConfig:
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
    model: ModelConfig = field(default_factory=ModelConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def validate(self) -> Self:
        """Check every section (its own ``validate()``), then the constraints between them."""
        for f in dataclasses.fields(self):
            with _in_section(f.name):
                getattr(self, f.name).validate()
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
        return dataclasses.asdict(self)

    def is_explicit(self, key: str) -> bool:
        """Did the YAML or an override set ``section.field``? (``load_config`` records the keys;
        for a config built otherwise, a value that differs from the default counts as set.)"""
        keys = getattr(self, "_explicit_keys", None)
        if keys is not None:
            return key in keys
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


# ---------------------------------------------------------------- loading and overrides

_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_ok(value, tp) -> tuple[bool, object]:
    """Is ``value`` acceptable for annotation ``tp``? Returns (ok, coerced value)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return True, float(value)  # 1e-4: YAML 1.1 wants a dot, PyYAML reads a string
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        (arg,) = typing.get_args(tp) or (object,)
        out = []
        for item in value:
            ok, v = _type_ok(item, arg)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return False, value
        out = []
        for item, arg in zip(value, args):
            ok, v = _type_ok(item, arg)
            if not ok:
                return False, value
            out.append(v)
        return True, tuple(out)
    return True, value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _apply(obj, key_path: str, value) -> None:
    section_name, _, field_name = key_path.partition(".")
    sections = {f.name: f for f in dataclasses.fields(obj)}
    if section_name not in sections or not field_name:
        raise UsageError(f"config key {key_path!r}: unknown; expected 'SECTION.FIELD' with "
                         f"SECTION one of {', '.join(sections)}")
    section = getattr(obj, section_name)
    hints = typing.get_type_hints(type(section))
    known = [f.name for f in dataclasses.fields(section)]
    if field_name not in known:
        raise UsageError(f"config key {key_path!r}: unknown field of {section_name}; known: "
                         f"{', '.join(known)}")
    ok, coerced = _type_ok(value, hints[field_name])
    if not ok and isinstance(value, bool) and _type_ok("x", hints[field_name])[0]:
        raise UsageError(f"config key {key_path!r}: got the boolean {value!r}; YAML reads "
                         "off/on/no/yes unquoted as booleans, quote the value (e.g. 'off')")
    if not ok:
        raise UsageError(f"config key {key_path!r}: got {value!r}, expected "
                         f"{_type_name(hints[field_name])}")
    setattr(section, field_name, coerced)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not prefix:
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise UsageError(f"override {text!r}: expected SECTION.FIELD=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: str | Path) -> dict:
    """The YAML run config as a dict (sections, and an optional ``stages`` list)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config: file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"--config: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config: {path} must hold a mapping of sections")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                validate: bool = True, stage: dict | None = None, cls=RunConfig) -> RunConfig:
    """defaults < YAML file < ``stage`` (a flat ``section.field`` dict, training/stages.py) <
    overrides (``["model.num_layers=2", ...]`` or a flat dict). A ``stages:`` list in the YAML
    is not applied here: ``train`` runs it (``training/stages.py``). ``cls``: ``RunConfig`` or
    a subclass with more sections (``onpolicy.config.OnPolicyRunConfig``)."""
    cfg = cls()
    explicit = set()
    if path is not None:
        data = {k: v for k, v in read_yaml(path).items() if k != "stages"}
        for section, body in data.items():
            if not isinstance(body, dict):
                raise UsageError(f"config section {section!r} in {path}: expected a mapping")
        for key, value in _flatten(data).items():
            _apply(cfg, key, value)
            explicit.add(key)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in [*(stage or {}).items(), *items]:
        _apply(cfg, key, value)
        explicit.add(key)
    cfg._explicit_keys = explicit  # not a field: read by is_explicit (--init-from adoption)
    return cfg.validate() if validate else cfg


def config_from_dict(d: dict, validate: bool = False, cls=RunConfig) -> RunConfig:
    """Rebuild a ``RunConfig`` (or ``cls``) saved with ``to_dict`` (checkpoints, run snapshots)."""
    cfg = cls()
    for key, value in _flatten(d).items():
        _apply(cfg, key, value)
    return cfg.validate() if validate else cfg
