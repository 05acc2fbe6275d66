"""``convert mcore-to-hf``: a megatron-diffusion checkpoint -> an HF directory ``transformers``
loads (``LlamaForCausalLM``; ``Qwen2ForCausalLM`` for a model with QKV bias, ``Qwen3ForCausalLM``
for one with q/k norms).

The checkpoint is read one transformer layer at a time (``dist_stream.GroupLoader``, any TP/PP
layout); each HF tensor is computed from the loaded layer when its turn comes
(``tensor_map.hf_producers``) and appended to the current shard, so the export holds about one
layer. Next to the weights go ``config.json`` (with a ``"diffusion"`` block, and ``auto_map`` for
block-mode models), ``generation_config.json``, the tokenizer files and chat template,
``megatron_diffusion.json`` (the full ``meta.json``, so export + import is exact), a model card
and, for block-mode models, ``block_diffusion.py`` (``hf_block_diffusion``). docs/convert.md
"mcore-to-hf" lists each file.
"""

import json
import shutil
from pathlib import Path

import torch

from megatron_diffusion.convert.generation import export_generation, export_token_ids
from megatron_diffusion.convert.hf_config import export_config
from megatron_diffusion.convert.hf_to_mcore import (
    SIDECAR,
    build_empty_model,
    progress_bar,
)
from megatron_diffusion.convert.hf_tokenizer import export_tokenizer_files
from megatron_diffusion.convert.outdir import atomic_output_dir, check_output_dir
from megatron_diffusion.convert.safetensors_io import write_shards
from megatron_diffusion.convert.tensor_map import TensorLayout, hf_producers
from megatron_diffusion.errors import UsageError, check_choice
from megatron_diffusion.training.checkpoint import read_meta, resolve_checkpoint

BLOCK_HELPER = "block_diffusion.py"
"""Copied into block-mode exports: ``hf_block_diffusion`` (sampling with transformers alone)."""
REMOTE_CLASS = "BlockDiffusion{architecture}"
"""The class of ``hf_block_diffusion`` that ``auto_map`` names for ``trust_remote_code``."""
EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def diffusion_block(cfg, meta: dict) -> dict:
    """What a sampler needs to know about these weights, in ``config.json``."""
    a = cfg.attention
    return {"format": "megatron-diffusion", "model_kind": "masked-diffusion-lm",
            "objective": cfg.loss.objective, "attention_mode": a.mode,
            "block_size": a.block_size if a.mode == "block" else None,
            "clean_stream": a.clean_stream if a.mode == "block" else None,
            "visibility": a.visibility, "mask_token_id": cfg.model.mask_token_id,
            "logit_shift": cfg.model.logit_shift, "step": meta.get("step"),
            "tokenizer_hash": meta.get("tokenizer_hash")}


def model_card(cfg, block: dict, architecture: str) -> str:
    mode = block["attention_mode"]
    helper = ("; or with transformers alone: `model = AutoModelForCausalLM.from_pretrained("
              "THIS_DIR, trust_remote_code=True)`, then `model.diffusion_generate(prompt_ids)` "
              f"(the code is `{BLOCK_HELPER}` in this directory; its docstring gives the mask and "
              "readout, and how to use it without `trust_remote_code`)"
              if mode == "block" else "")
    how = ("block diffusion: blocks of {} tokens are denoised in parallel, left to right"
           .format(block["block_size"]) if mode == "block" else
           f"{mode} attention")
    return f"""---
library_name: transformers
tags: [diffusion, masked-diffusion, code, megatron-diffusion]
---
# Masked diffusion language model (megatron-diffusion export)

These are the weights of a **masked diffusion LM** trained with megatron-diffusion, stored in
the `{architecture}` layout so that `transformers` loads them. Sampling mode: {how}.
`[MASK]` is token id {block['mask_token_id']}; its logit must be set to `-inf` before sampling.
Logit shift: {block['logit_shift']} (false: output `i` predicts token `i`).

`AutoModelForCausalLM.generate()` runs these weights as a left-to-right AR model, which is
{'what they are' if block['objective'] == 'ar' and mode == 'causal' else 'NOT how they were trained'}.
Sample with megatron-diffusion instead: `megatron-diffusion sample --checkpoint THIS_DIR ...`
(the sampler reads `megatron_diffusion.json` for the full run configuration){helper}.

Architecture: {cfg.model.num_layers} layers, hidden {cfg.model.hidden_size}, {cfg.model.num_attention_heads}
query heads / {cfg.model.num_query_groups} key-value heads, vocabulary {cfg.model.vocab_size}.
The `"diffusion"` block of `config.json` records attention mode, block size and mask token id.
"""


def _architecture(cfg, meta: dict) -> str:
    source = meta.get("converted_from") or {}
    if source.get("architecture"):
        return source["architecture"]
    if cfg.model.add_qkv_bias and cfg.model.qk_layernorm:
        raise UsageError("--checkpoint: a model with both model.add_qkv_bias and "
                         "model.qk_layernorm has no HF architecture to export to (Qwen2 has the "
                         "bias, Qwen3 the norms)")
    if cfg.model.qk_layernorm:
        return "Qwen3ForCausalLM"
    return "Qwen2ForCausalLM" if cfg.model.add_qkv_bias else "LlamaForCausalLM"


def convert_mcore_to_hf(checkpoint, out, *, dtype: str | None = None,
                        max_shard_bytes: int = 5 * 2**30, force: bool = False,
                        progress: bool = True) -> Path:
    from megatron_diffusion.config import config_from_dict
    from megatron_diffusion.convert.dist_stream import GroupLoader
    from megatron_diffusion.parallel.process_groups import initialize_model_parallel
    from megatron_diffusion.training.checkpoint import check_own_tokenizer

    out = check_output_dir(out, force)
    ckpt = resolve_checkpoint(checkpoint)
    meta = read_meta(ckpt)  # checks the format
    if not (ckpt / "tokenizer.json").is_file():
        raise UsageError(f"--checkpoint: {ckpt} has no tokenizer.json to export")
    check_own_tokenizer(ckpt, meta)  # the export ships it as the model's tokenizer
    cfg = config_from_dict(meta["config"])
    dtype = dtype or cfg.model.params_dtype
    check_choice("--dtype", dtype, tuple(EXPORT_DTYPES))
    torch_dtype = EXPORT_DTYPES[dtype]
    architecture = _architecture(cfg, meta)
    initialize_model_parallel(1, 1, seed=cfg.training.seed)
    model = build_empty_model(cfg.model)  # uninitialised: only its sharded state dict is used
    loader = GroupLoader(model, str(ckpt / "model_optim"))

    def get_full(name: str) -> torch.Tensor:
        try:
            return loader(name)
        except Exception as e:  # dist_checkpointing: missing keys, shape mismatch
            raise UsageError(f"--checkpoint: {ckpt} does not load into its own config's model "
                             f"({name}): {str(e).splitlines()[0]}") from None

    layout = TensorLayout.for_model(cfg.model, hf_vocab_size=cfg.model.vocab_size,
                                    padded_vocab_size=model.vocab_size)
    producers = hf_producers(layout, get_full)
    specs = [(name, shape, torch_dtype) for name, shape in layout.hf_shapes(exported=True).items()]
    source = meta.get("converted_from") or {}
    with atomic_output_dir(out, force) as tmp:
        bar = progress_bar(len(specs), "mcore-to-hf", progress)
        write_shards(tmp, specs, lambda name: producers[name]().to(torch_dtype),
                     max_shard_bytes=max_shard_bytes, on_tensor=lambda _: bar.update())
        bar.close()
        generation = meta.get("generation") or {}
        tok = export_tokenizer_files(tmp, ckpt / "tokenizer.json",
                                     max_length=cfg.model.max_position_embeddings,
                                     source_config=source.get("tokenizer_config"),
                                     chat_template=generation.get("chat_template"))
        base = source.get("config")
        token_ids = export_token_ids(generation, base, document_eos=tok.eos_id,
                                     pad_id=tok.pad_id)
        block = diffusion_block(cfg, meta)
        hf_config = export_config(cfg.model, architecture=architecture, dtype=dtype,
                                  token_ids=token_ids, diffusion=block, base=base)
        if cfg.attention.mode == "block":  # trust_remote_code: the class in BLOCK_HELPER
            remote = REMOTE_CLASS.format(architecture=architecture)
            hf_config["auto_map"] = {"AutoModelForCausalLM": f"{Path(BLOCK_HELPER).stem}.{remote}"}
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        export_generation(tmp, generation, token_ids)
        (tmp / SIDECAR).write_text(json.dumps(
            {"format": "megatron-diffusion-hf-export", "format_version": 1,
             "source_checkpoint": str(ckpt.absolute()), "dtype": dtype, "meta": meta}, indent=2))
        (tmp / "README.md").write_text(model_card(cfg, block, architecture))
        if cfg.attention.mode == "block":  # how to run it with transformers alone
            shutil.copyfile(Path(__file__).with_name("hf_block_diffusion.py"),
                            tmp / BLOCK_HELPER)
    return out
