"""Shared test helpers: tiny models, deterministic weights and batches, torchrun launcher."""

import os
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import torch

from megatron_diffusion.batch import DiffusionBatch
from megatron_diffusion.masks.config import AttentionConfig
from megatron_diffusion.model.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 61
MASK_ID = 60


def tiny_model_config(**overrides) -> ModelConfig:
    kw = dict(num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=2,
              ffn_hidden_size=96, vocab_size=VOCAB, mask_token_id=MASK_ID,
              make_vocab_size_divisible_by=16, max_position_embeddings=64)
    kw.update(overrides)
    return ModelConfig(**kw)


@torch.no_grad()
def seeded_full_weights(shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Deterministic weights by name (independent of the parallel layout that asks)."""
    out = {}
    for name, shape in sorted(shapes.items()):
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        t = torch.randn(shape, generator=g) * 0.05
        if "layernorm" in name or name.endswith("final_layernorm.weight"):
            t = 1.0 + t
        out[name] = t
    return out


def synthetic_batch(attn: AttentionConfig, *, rows: int, seq_len: int, seed: int,
                    doc_lengths=None) -> DiffusionBatch:
    """A corrupted batch built by hand (masking at ~50%, ELBO-like weights)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, MASK_ID, (rows, seq_len), generator=g)
    masked = torch.rand(rows, seq_len, generator=g) < 0.5
    masked[:, 0] = True
    xt = torch.where(masked, torch.full_like(x0, MASK_ID), x0)
    if doc_lengths is None:
        doc = torch.zeros(rows, seq_len, dtype=torch.long)
    else:
        doc = torch.repeat_interleave(torch.arange(len(doc_lengths)),
                                      torch.tensor(doc_lengths)).expand(rows, -1).clone()
    tokens = torch.cat([xt, x0], dim=1) if attn.mode == "block" else xt
    t = torch.rand(rows, 1, generator=g) * 0.9 + 0.1
    return DiffusionBatch(tokens_BS=tokens, labels_BL=x0, loss_weights_BL=masked.float() / t,
                          document_ids_BL=doc, loss_mask_BL=torch.ones_like(masked),
                          t_BN=t, num_edits_B=torch.zeros(rows, dtype=torch.long))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str, nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
           "--max-restarts=0", script, *args]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {script} {args} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def stdlib_texts(limit: int = 40) -> list[str]:
    """A small real code corpus: the interpreter's own json/ and email/ packages."""
    import sysconfig

    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((lib / "json").glob("*.py")) + sorted((lib / "email").glob("*.py"))
    return [f.read_text(encoding="utf-8", errors="replace") for f in files[:limit]]


def make_tokenizer(path: Path, vocab_size: int = 300, special: tuple[str, ...] = ()) -> Path:
    """A byte-level BPE of our data tools; ``special``: more special tokens (ids from
    ``vocab_size`` on), e.g. a chat template's ``<|im_start|>``."""
    from megatron_diffusion.data.tokenizer import train_tokenizer

    tok = train_tokenizer(stdlib_texts(), vocab_size)
    tok.add_special_tokens(list(special))
    tok.save(str(path))
    return path


def make_checkpoint(run_dir: Path, *, attention=None, tokenizer_vocab: int = 300,
                    seed: int = 0, special_tokens: tuple[str, ...] = (),
                    meta_fields: dict | None = None, **model_overrides) -> Path:
    """A tiny randomly initialised checkpoint (one process), as the trainer would write it.
    ``special_tokens``: extra special tokens of its tokenizer; ``meta_fields``: more meta.json
    entries (``generation``, ...)."""
    import torch.distributed as dist

    from megatron_diffusion.config import RunConfig
    from megatron_diffusion.data.tokenizer import load_tokenizer
    from megatron_diffusion.model import weights
    from megatron_diffusion.model.gpt import build_model, transformer_config
    from megatron_diffusion.parallel.process_groups import initialize_model_parallel
    from megatron_diffusion.training.checkpoint import checkpoint_meta, save_checkpoint

    run_dir.mkdir(parents=True, exist_ok=True)
    tok_path = make_tokenizer(run_dir / "tokenizer.json", tokenizer_vocab, special_tokens)
    tok = load_tokenizer(tok_path)
    cfg = RunConfig()
    cfg.attention = attention or AttentionConfig(mode="block", block_size=4)
    cfg.data.blend = [(1.0, "unused.zarr")]
    cfg.data.seq_len = 32
    cfg.model = tiny_model_config(vocab_size=tok.vocab_size, mask_token_id=tok.mask_id,
                                  make_vocab_size_divisible_by=64, max_position_embeddings=256,
                                  **model_overrides)
    initialize_model_parallel(1, 1, seed=seed)
    model = build_model(cfg.model, transformer_config(cfg.model))
    shapes = {k: v.shape for k, v in weights.local_to_full([model]).items()}
    weights.load_full([model], seeded_full_weights(shapes))
    meta = checkpoint_meta(cfg, tokenizer_hash=tok.hash, **(meta_fields or {}))
    path = save_checkpoint(run_dir, 0, [model], None, meta=meta, loader_state={},
                           tokenizer_path=str(tok_path))
    return path


def rewrite_meta(ckpt, meta: dict) -> None:
    """Replace a checkpoint's meta.json and its entry in checksums.json (a test that edits a
    checkpoint on purpose: the checksums refuse any other change)."""
    import json

    from megatron_diffusion.training.checkpoint import CHECKSUMS, _file_sums

    ckpt = Path(ckpt)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    sums_file = ckpt / CHECKSUMS
    if sums_file.is_file():
        sums = json.loads(sums_file.read_text())
        sums["files"].update(_file_sums(ckpt, ["meta.json"]))
        sums_file.write_text(json.dumps(sums))
