"""``convert gguf-to-mcore``: a llama.cpp GGUF (Llama/Qwen2/Qwen3) -> a megatron-diffusion
checkpoint.

The GGUF is turned into what ``hf-to-mcore`` reads, and the HF import does the rest, unchanged:

* ``gguf_file.hf_config``: the metadata as an HF ``config.json`` (validated by
  ``hf_config.parse_hf_config``, so the same features are refused);
* ``gguf_file.GGUFTensors``: each tensor under its HF name, dequantised (``gguf.quants``) and,
  for Llama, with llama.cpp's q/k RoPE permutation undone, when ``HFTensorView`` asks for it;
* ``gguf_tokenizer.gguf_tokenizer``: the vocabulary/merges/specials as a ``tokenizer.json``,
  then ``hf_tokenizer.prepare_tokenizer_json`` adds ``[MASK]`` and checks the document EOS;
* ``generation.gguf_generation``: stop ids (GGUF eos/eot/eom + the document EOS) and the chat
  template for ``meta.json``.

Everything is read and checked (architecture, every tensor's type and size, the tokenizer)
before the output directory is created; ``hf_to_mcore.write_import`` then streams one tensor at a
time into ``OUT/checkpoints/iter_0000000`` exactly as an HF import does. The weights are stored
in float32 (dequantised values; ``bfloat16`` for a BF16 file) unless ``--params-dtype`` says
otherwise. ``meta.json`` ``converted_from`` has ``format: "gguf"``, the synthesised HF config
(so ``mcore-to-hf`` writes a normal HF directory) and the tensor types found.
"""

from pathlib import Path

from megatron_diffusion.convert import gguf_file
from megatron_diffusion.convert.generation import gguf_generation
from megatron_diffusion.convert.gguf_tokenizer import gguf_tokenizer
from megatron_diffusion.convert.hf_config import parse_hf_config
from megatron_diffusion.convert.hf_to_mcore import (
    ImportPlan,
    check_tensors,
    run_config,
    source_description,
    write_import,
)
from megatron_diffusion.convert.hf_tokenizer import prepare_tokenizer_json
from megatron_diffusion.convert.outdir import check_output_dir


def plan_gguf_import(gguf_path, *, add_mask_token: bool = False, eos_token: str | None = None,
                     params_dtype: str | None = None) -> ImportPlan:
    """Read and check everything about a GGUF file; nothing is written."""
    path = Path(gguf_path)
    reader = gguf_file.open_gguf(path)
    raw = gguf_file.hf_config(reader, path)
    types = gguf_file.check_tensor_types(reader)
    hf = parse_hf_config(raw, f"--gguf: {path}")
    tensors = gguf_file.GGUFTensors(reader, path, num_attention_heads=hf.num_attention_heads,
                                    num_query_groups=hf.num_query_groups)
    text, tok_config = gguf_tokenizer(reader, path)
    tok = prepare_tokenizer_json(text, f"{path} (tokenizer.ggml.*)", option="--gguf",
                                 add_mask_token=add_mask_token, hf_vocab_size=hf.vocab_size,
                                 eos_token=eos_token, hf_tokenizer_config=tok_config)
    dtype = params_dtype or ("bfloat16" if types.get("BF16") == sum(types.values()) else
                             "float32")
    cfg = run_config(hf, tok, dtype, None, "")
    generation = gguf_generation(reader, tok.loaded.eos_id)
    plan = ImportPlan(path, hf, tensors, tok, cfg, None, {}, generation, option="--gguf")
    plan.converted_from = source_description(plan, "gguf")
    plan.converted_from["gguf"] = {"name": gguf_file.field(reader, "general.name"),
                                   "architecture": tensors.arch, "tensor_types": dict(types)}
    check_tensors(plan)
    return plan


def convert_gguf_to_mcore(gguf_path, out, *, tensor_model_parallel_size: int = 1,
                          pipeline_model_parallel_size: int = 1, add_mask_token: bool = False,
                          eos_token: str | None = None, params_dtype: str | None = None,
                          force: bool = False, progress: bool = True) -> Path:
    """Convert; returns the checkpoint directory (``OUT/checkpoints/iter_0000000``)."""
    out = check_output_dir(out, force)
    plan = plan_gguf_import(gguf_path, add_mask_token=add_mask_token, eos_token=eos_token,
                            params_dtype=params_dtype)
    return write_import(plan, out, tensor_model_parallel_size=tensor_model_parallel_size,
                        pipeline_model_parallel_size=pipeline_model_parallel_size, force=force,
                        progress=progress, desc="gguf-to-mcore")
