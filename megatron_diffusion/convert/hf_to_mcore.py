"""``convert hf-to-mcore``: an HF Llama/Qwen2/Qwen3 checkpoint -> a megatron-diffusion
checkpoint.

Streaming: the model is built uninitialised to obtain megatron's sharded state dict, and each
entry gets a fresh tensor from ``HFTensorView``, which reads only the HF tensors it is made of
and fuses them (``tensor_map``), so peak memory is one copy of the weights (``dist_stream``;
measured in docs/convert.md "Memory: streaming"). The result is a trainer checkpoint at step 0
without optimizer state, which ``train --init-from`` loads; its config describes an AR model
(``attention.mode=causal``, ``model.logit_shift=true``, ``loss.objective=ar``), or the original
run config when the directory is our own export (``megatron_diffusion.json``). ``--tp/--pp`` are
checked against the model and the vocabulary is padded as megatron pads it. ``plan_import`` (read
and check) and ``write_import`` (stream and save) are separate so ``gguf_to_mcore`` reuses them.
docs/convert.md "hf-to-mcore".
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_diffusion.config import RunConfig, config_from_dict
from megatron_diffusion.convert.generation import hf_generation
from megatron_diffusion.convert.hf_config import HFModel, model_config, read_hf_config
from megatron_diffusion.convert.hf_tokenizer import PreparedTokenizer, prepare_tokenizer
from megatron_diffusion.convert.outdir import atomic_output_dir, check_output_dir
from megatron_diffusion.convert.safetensors_io import SafetensorsCheckpoint
from megatron_diffusion.convert.tensor_map import TensorLayout
from megatron_diffusion.data.tokenizer import check_tokenizer_hash
from megatron_diffusion.errors import UsageError
from megatron_diffusion.training.checkpoint import check_format, checkpoint_meta, save_checkpoint

SIDECAR = "megatron_diffusion.json"
STRUCTURAL_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                     "ffn_hidden_size", "vocab_size", "mask_token_id", "add_qkv_bias",
                     "qk_layernorm", "untie_embeddings_and_output_weights", "rotary_base",
                     "norm_epsilon")
TE_NORM_NAMES = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
                 "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}
"""Local-spec norm name -> the Transformer Engine spec's name of the same tensor."""
IGNORED_HF_TENSORS = (".rotary_emb.inv_freq",)
"""Buffers some older checkpoints save; recomputed from the config."""


@dataclass
class ImportPlan:
    """Everything an import writes, checked before any heavy work (HF or GGUF source)."""

    hf_dir: Path
    """The source: an HF directory, or the GGUF file."""
    hf: HFModel
    reader: SafetensorsCheckpoint
    """HF tensor name -> tensor (``gguf_file.GGUFTensors`` for a GGUF)."""
    tokenizer: PreparedTokenizer
    config: RunConfig
    sidecar: dict | None
    converted_from: dict
    generation: dict
    """``meta.json`` ``generation`` (``convert.generation``)."""
    option: str = "--hf"

    def layout(self, padded_vocab_size: int) -> TensorLayout:
        return TensorLayout.for_model(self.config.model, hf_vocab_size=self.hf.vocab_size,
                                      padded_vocab_size=padded_vocab_size)


def read_sidecar(hf_dir) -> dict | None:
    path = Path(hf_dir) / SIDECAR
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("format") != "megatron-diffusion-hf-export":
        raise UsageError(f"--hf: {path} is not a megatron-diffusion export description")
    check_format(data.get("meta") or {}, f"--hf: {path} meta")  # the exported checkpoint's
    return data


def _default_dtype(reader: SafetensorsCheckpoint) -> str:
    first = reader.entries.get("model.embed_tokens.weight")
    return "bfloat16" if first is not None and first.dtype == torch.bfloat16 else "float32"


def plan_import(hf_dir, *, add_mask_token: bool = False, params_dtype: str | None = None,
                eos_token: str | None = None,
                make_vocab_size_divisible_by: int = 128) -> ImportPlan:
    """Read and check everything about an HF directory before any heavy work."""
    hf_dir = Path(hf_dir)
    hf = read_hf_config(hf_dir)
    reader = SafetensorsCheckpoint(hf_dir)
    tok = prepare_tokenizer(hf_dir, add_mask_token=add_mask_token, hf_vocab_size=hf.vocab_size,
                            eos_token=eos_token)
    sidecar = read_sidecar(hf_dir)
    if sidecar is not None:  # an export: its tokenizer is the exported checkpoint's
        check_tokenizer_hash(f"{hf_dir / 'tokenizer.json'} is not the tokenizer the exported "
                             "checkpoint was trained with", ("hash", tok.loaded.hash),
                             (f"{hf_dir / SIDECAR} tokenizer_hash",
                              sidecar["meta"].get("tokenizer_hash")))
    cfg = run_config(hf, tok, params_dtype or _default_dtype(reader), sidecar,
                     f"--hf: {hf_dir / SIDECAR}", make_vocab_size_divisible_by)
    if sidecar is not None and "generation" in sidecar["meta"]:
        generation = sidecar["meta"]["generation"]
    else:
        generation = hf_generation(hf_dir, hf.raw, tok.hf_tokenizer_config, tok.loaded.eos_id)
    plan = ImportPlan(hf_dir, hf, reader, tok, cfg, sidecar, {}, generation)
    plan.converted_from = hf_converted_from(plan)
    check_tensors(plan)
    return plan


def run_config(hf: HFModel, tok: PreparedTokenizer, dtype: str, sidecar: dict | None,
               sidecar_where: str, make_vocab_size_divisible_by: int = 128) -> RunConfig:
    """The run config of an imported model: the AR defaults, or an export's own config."""
    vocab = max(hf.vocab_size, tok.loaded.vocab_size)
    derived = model_config(hf, vocab_size=vocab, mask_token_id=tok.loaded.mask_id,
                           params_dtype=dtype,
                           make_vocab_size_divisible_by=make_vocab_size_divisible_by)
    if sidecar is not None:
        cfg = config_from_dict(sidecar["meta"]["config"])
        for name in STRUCTURAL_FIELDS:
            if getattr(cfg.model, name) != getattr(derived, name):
                raise UsageError(f"{sidecar_where} says model.{name}="
                                 f"{getattr(cfg.model, name)!r} but config.json/tokenizer give "
                                 f"{getattr(derived, name)!r}")
        cfg.model.params_dtype = dtype
    else:
        cfg = RunConfig()
        cfg.model = derived
        cfg.attention.mode = "causal"
        cfg.loss.objective = "ar"
    return cfg


def check_tensors(plan: ImportPlan) -> None:
    """Every expected HF tensor present with its shape, nothing unexplained left over."""
    expected = plan.layout(plan.config.model.vocab_size).hf_shapes()
    reader = plan.reader
    for name, shape in expected.items():
        if name not in reader:
            raise UsageError(f"{plan.option}: tensor {name!r} is missing from {plan.hf_dir} "
                             f"(expected for a {plan.hf.architecture} with this config.json)")
        got = reader.entries[name].shape
        if tuple(got) != tuple(shape):
            raise UsageError(f"{plan.option}: tensor {name!r} in {reader.entries[name].file.name} "
                             f"has shape {list(got)}, expected {list(shape)} from its config")
    for name in reader.keys():
        if name in expected or name.endswith(IGNORED_HF_TENSORS):
            continue
        if name == "lm_head.weight" and plan.hf.tied:
            continue  # some tied checkpoints store the (identical) head too
        raise UsageError(f"{plan.option}: unexpected tensor {name!r} in "
                         f"{reader.entries[name].file.name}: "
                         f"not part of a {plan.hf.architecture} with this config.json")


class HFTensorView(Mapping):
    """Megatron full name -> tensor, computed from the HF files when asked (one at a time)."""

    def __init__(self, plan: ImportPlan, padded_vocab_size: int, on_read=None):
        self.layout = plan.layout(padded_vocab_size)
        self.reader = plan.reader
        self.rules = {r.megatron: r for r in self.layout.rules()}
        self.on_read = on_read
        # Transformer Engine layers fuse the norms into the next linear; same tensors
        self.aliases = {}
        for name in self.rules:
            for local, te in TE_NORM_NAMES.items():
                if name.endswith(local):
                    self.aliases[name[: -len(local)] + te] = name

    def __contains__(self, name) -> bool:
        return name in self.rules or name in self.aliases

    def __getitem__(self, name: str) -> torch.Tensor:
        rule = self.rules[self.aliases.get(name, name)]
        if rule.kind == "vocab":  # read straight into the padded tensor: no second copy
            (hf_name,) = rule.hf
            tensor = self.layout.empty_vocab(self.reader.entries[hf_name].dtype)
            self.reader.read(hf_name, out=tensor[: self.layout.hf_vocab_size])
            self.layout.init_added_rows(tensor)
        else:
            tensor = self.layout.to_megatron(rule, [self.reader.read(n) for n in rule.hf])
        if self.on_read is not None:
            self.on_read(name)
        return tensor

    def pieces(self, name: str) -> list[torch.Tensor]:
        """``[full tensor]``, or for a SwiGLU fc1 the HF ``[gate, up]`` as read (each its own
        storage, so ``dist_stream`` can hand them to the fc1 shards without copies)."""
        rule = self.rules[name]
        if rule.kind == "glu":
            return [self.reader.read(n) for n in rule.hf]
        return [self[name]]

    def __iter__(self):
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)


def check_layout(model_cfg, tp: int, pp: int) -> None:
    for option, value in (("--tp", tp), ("--pp", pp)):
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"{option}: got {value!r}, expected an integer >= 1")
    if model_cfg.num_attention_heads % tp or model_cfg.num_query_groups % tp:
        raise UsageError(f"--tp: {tp} does not divide the model's attention heads "
                         f"(num_attention_heads={model_cfg.num_attention_heads}, "
                         f"num_key_value_heads={model_cfg.num_query_groups})")
    if model_cfg.num_layers % pp:
        raise UsageError(f"--pp: {pp} does not divide num_hidden_layers={model_cfg.num_layers}")


def conversion_model_config(model_cfg):
    """``model_cfg`` with megatron-core's local layers (runs anywhere). A checkpoint trained with
    Transformer Engine layers has the same checkpoint keys: the local spec maps its separate
    norms onto TE's fused ``layer_norm_weight`` names."""
    import copy

    cfg = copy.deepcopy(model_cfg)
    cfg.transformer_impl, cfg.attention_backend, cfg.fp8 = "local", "sdpa", None
    return cfg


def build_empty_model(model_cfg, padded_for_tp: int = 1):
    """A one-process model whose weights are about to be overwritten (no random init). The
    vocabulary is padded as a ``padded_for_tp``-way TP run pads it."""
    from megatron_diffusion.model.gpt import build_model, transformer_config

    cfg = conversion_model_config(model_cfg)
    cfg.make_vocab_size_divisible_by *= padded_for_tp
    tcfg = transformer_config(cfg, use_cpu_initialization=True)  # host memory even with a GPU
    tcfg.perform_initialization = False
    return build_model(cfg, tcfg)


def progress_bar(total: int, desc: str, enabled: bool):
    from megatron_diffusion.progress import Progress

    return Progress(total, desc, unit="tensor", enabled=enabled)


def convert_hf_to_mcore(hf_dir, out, *, tensor_model_parallel_size: int = 1,
                        pipeline_model_parallel_size: int = 1, add_mask_token: bool = False,
                        eos_token: str | None = None, params_dtype: str | None = None,
                        force: bool = False, progress: bool = True) -> Path:
    """Convert; returns the checkpoint directory (``OUT/checkpoints/iter_0000000``)."""
    out = check_output_dir(out, force)
    plan = plan_import(hf_dir, add_mask_token=add_mask_token, params_dtype=params_dtype,
                       eos_token=eos_token)
    return write_import(plan, out, tensor_model_parallel_size=tensor_model_parallel_size,
                        pipeline_model_parallel_size=pipeline_model_parallel_size, force=force,
                        progress=progress, desc="hf-to-mcore")


def write_import(plan: ImportPlan, out, *, tensor_model_parallel_size: int,
                 pipeline_model_parallel_size: int, force: bool, progress: bool,
                 desc: str) -> Path:
    """Stream ``plan``'s tensors into a step-0 trainer checkpoint under ``out`` (atomically)."""
    from megatron_diffusion.convert.dist_stream import (
        PrebuiltChunk,
        prebuilt_sharded_state_dict,
    )
    from megatron_diffusion.parallel.process_groups import initialize_model_parallel

    tp, pp = tensor_model_parallel_size, pipeline_model_parallel_size
    cfg = plan.config
    check_layout(cfg.model, tp, pp)
    cfg.parallel.tensor_model_parallel_size = tp
    cfg.parallel.pipeline_model_parallel_size = pp
    cfg.parallel.virtual_pipeline_model_parallel_size = None
    initialize_model_parallel(1, 1, seed=cfg.training.seed)
    with atomic_output_dir(out, force) as tmp:
        model = build_empty_model(cfg.model, padded_for_tp=tp)
        view = HFTensorView(plan, model.vocab_size)
        bar = progress_bar(len(view), desc, progress)
        sharded = prebuilt_sharded_state_dict(model, view.pieces, list(view),
                                              on_tensor=lambda _: bar.update())
        bar.close()
        tok_path = tmp / "tokenizer.json"
        tok_path.write_text(plan.tokenizer.json, encoding="utf-8")
        meta = checkpoint_meta(cfg, tokenizer_hash=plan.tokenizer.loaded.hash,
                               weights_only=True, converted_from=plan.converted_from,
                               generation=plan.generation)
        save_checkpoint(tmp, 0, [PrebuiltChunk(sharded)], None, meta=meta, loader_state={},
                        tokenizer_path=str(tok_path))
    return Path(out) / "checkpoints" / "iter_0000000"


def hf_converted_from(plan: ImportPlan) -> dict:
    """Provenance kept in ``meta.json``; the export reuses the HF config and tokenizer config."""
    if plan.sidecar is not None and "converted_from" in plan.sidecar["meta"]:
        return plan.sidecar["meta"]["converted_from"]
    return source_description(plan, "hf")


def source_description(plan: ImportPlan, kind: str) -> dict:
    return {"format": kind, "path": str(plan.hf_dir.absolute()),
            "architecture": plan.hf.architecture, "hf_vocab_size": plan.hf.vocab_size,
            "added_mask_token": plan.tokenizer.added_mask_token,
            "mask_token_id": plan.tokenizer.loaded.mask_id,
            "eos_token_id": plan.tokenizer.loaded.eos_id,
            "config": plan.hf.raw, "tokenizer_config": plan.tokenizer.hf_tokenizer_config}
