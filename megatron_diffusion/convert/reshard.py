"""``convert reshard``: rewrite a checkpoint as a TP=N, PP=M job saves it.

Checkpoints are ``dist_checkpointing`` (``training/checkpoint.py``): every tensor is stored with
its global shape, so the trainer already resumes a run under another TP/PP layout without this
command. ``reshard`` is for what remains:

* proving, before a job allocation is spent, that a checkpoint loads under the target layout
  (TP must divide the heads, PP the layers; every shard present);
* rewriting it weights-only (no optimizer/loader/RNG state) with the vocabulary padded for the
  target TP, and the layout recorded in ``meta.json`` (``config.parallel``), e.g. to ship it.

It runs with one process per model-parallel rank: the model is built under TP=N, PP=M, every rank
loads its own slice (``load_checkpoint``) and saves it (``save_checkpoint``), so no rank holds
more than its shard. Started as a single process (``megatron-diffusion convert reshard ...``) it
launches ``N*M`` local processes with torchrun itself; under an existing launcher (torchrun,
SLURM) the world size must be ``N*M``.
"""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from megatron_diffusion.convert.hf_to_mcore import check_layout, conversion_model_config
from megatron_diffusion.convert.outdir import atomic_output_dir, check_output_dir
from megatron_diffusion.errors import UsageError

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _launched() -> bool:
    """Started by a launcher with several ranks (a single process may carry WORLD_SIZE=1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(num_procs: int, argv: list[str]) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={num_procs}",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
           "--max-restarts=0", "-m", "megatron_diffusion.cli", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run(cmd, env=env, check=False).returncode


def reshard(checkpoint, out, *, tensor_model_parallel_size: int,
            pipeline_model_parallel_size: int, force: bool = False) -> int:
    """Returns an exit status (0: ``out`` holds the resharded checkpoint)."""
    from megatron_diffusion.config import config_from_dict
    from megatron_diffusion.training.checkpoint import read_meta, resolve_checkpoint

    tp, pp = tensor_model_parallel_size, pipeline_model_parallel_size
    ckpt = resolve_checkpoint(checkpoint).absolute()
    meta = read_meta(ckpt)
    cfg = config_from_dict(meta["config"])
    check_layout(cfg.model, tp, pp)
    out = check_output_dir(out, force).absolute()
    if _launched():
        world = int(os.environ["WORLD_SIZE"])
        if world != tp * pp:
            raise UsageError(f"--tp x --pp = {tp * pp} must equal the number of processes "
                             f"({world}); launch with torchrun --nproc-per-node={tp * pp}")
    elif tp * pp > 1:
        argv = ["convert", "reshard", "--checkpoint", str(ckpt), "--out", str(out),
                "--tp", str(tp), "--pp", str(pp)] + (["--force"] if force else [])
        return _spawn(tp * pp, argv)
    _reshard_worker(ckpt, out, meta, cfg, tp, pp, force)
    return 0


def _reshard_worker(ckpt: Path, out: Path, meta: dict, cfg, tp: int, pp: int, force: bool):
    from megatron_diffusion.model.gpt import build_model_chunks, transformer_config
    from megatron_diffusion.parallel.process_groups import initialize_model_parallel
    from megatron_diffusion.training.checkpoint import load_checkpoint, save_checkpoint

    initialize_model_parallel(tp, pp, seed=cfg.training.seed)
    model_cfg = conversion_model_config(cfg.model)
    tcfg = transformer_config(model_cfg, tensor_model_parallel_size=tp,
                              pipeline_model_parallel_size=pp)
    tcfg.perform_initialization = False
    chunks = build_model_chunks(model_cfg, tcfg)
    load_checkpoint(ckpt, chunks)
    cfg.parallel.tensor_model_parallel_size = tp
    cfg.parallel.pipeline_model_parallel_size = pp
    cfg.parallel.virtual_pipeline_model_parallel_size = None
    new_meta = {k: v for k, v in meta.items() if k != "step"}
    new_meta.update(config=cfg.to_dict(), weights_only=True, resharded_from=str(ckpt))
    tokenizer = ckpt / "tokenizer.json"
    with atomic_output_dir(out, force) as tmp:
        save_checkpoint(tmp, int(meta.get("step", 0)), chunks, None, meta=new_meta,
                        loader_state={}, tokenizer_path=str(tokenizer) if tokenizer.is_file()
                        else None)
        if tokenizer.is_file() and (not _launched() or int(os.environ["RANK"]) == 0):
            shutil.copyfile(tokenizer, tmp / "tokenizer.json")
    if not _launched() or int(os.environ["RANK"]) == 0:
        print(f"wrote {out} (TP={tp}, PP={pp})")
