"""Peak memory and time of the conversions on a ~1 GB random Llama (docs/convert.md).

    python tools/bench_convert.py --workdir /tmp/bench_convert [--hidden 1024 --layers 16]

Builds a random ``LlamaForCausalLM`` with ``transformers`` (fp32, sharded safetensors, nothing
downloaded), then runs ``hf-to-mcore``, ``mcore-to-hf`` and ``verify`` each in a fresh process
and reports its wall time and peak resident set (``VmHWM``), next to the baseline of a process
that only imports the same modules. Prints one JSON object.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _child(argv: list[str]) -> None:
    """Run one CLI command in this process, then print its peak RSS as JSON."""
    sys.path.insert(0, str(ROOT))
    from megatron_diffusion import cli

    if argv == ["baseline"]:  # the fixed cost: the modules the commands import, a process group
        import transformers

        import megatron_diffusion.convert.hf_to_mcore
        import megatron_diffusion.model.gpt
        import megatron_diffusion.training.checkpoint
        from megatron_diffusion.parallel.process_groups import initialize_model_parallel

        initialize_model_parallel(1, 1)
        rc = 0
    else:
        rc = cli.main(argv)
    print(json.dumps({"rc": rc, "peak_rss_bytes": _vm_hwm_bytes()}))


def make_model(out: Path, hidden: int, layers: int, vocab: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from tests.convert.hf_fixtures import make_hf_tokenizer

    out.mkdir(parents=True)
    make_hf_tokenizer(out / "tokenizer.json", 2000, ["<s>", "</s>"])
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64,
                      num_key_value_heads=hidden // 128, max_position_embeddings=2048,
                      tie_word_embeddings=False, eos_token_id=1, bos_token_id=0)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, max_shard_size="300MB")
    return sum(p.numel() * p.element_size() for p in model.parameters())


def run_step(argv: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], check=False, capture_output=True,
                          text=True, env={"OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin",
                                          "PYTHONWARNINGS": "ignore", "HOME": str(Path.home())})
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"step {argv} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1])
    result["wall_s"] = round(wall, 1)
    result["stdout"] = [ln for ln in proc.stdout.splitlines() if not ln.startswith("{")][-1:]
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--vocab", type=int, default=32000)
    a = p.parse_args()
    if a.workdir.exists():
        shutil.rmtree(a.workdir)
    hf, mc, back = a.workdir / "hf", a.workdir / "mcore", a.workdir / "hf_back"
    start = time.perf_counter()
    model_bytes = make_model(hf, a.hidden, a.layers, a.vocab)
    report = {"model_bytes": model_bytes,
              "hf_files_bytes": sum(f.stat().st_size for f in hf.glob("*.safetensors")),
              "make_model_s": round(time.perf_counter() - start, 1),
              "config": {"hidden": a.hidden, "layers": a.layers, "vocab": a.vocab,
                         "dtype": "float32"}}
    report["baseline"] = run_step(["baseline"])
    report["hf_to_mcore"] = run_step(["convert", "hf-to-mcore", "--hf", str(hf), "--out", str(mc),
                                      "--add-mask-token", "--no-progress"])
    report["mcore_to_hf"] = run_step(["convert", "mcore-to-hf", "--checkpoint", str(mc),
                                      "--out", str(back), "--max-shard-size", "300MB",
                                      "--no-progress"])
    report["verify"] = run_step(["convert", "verify", "--hf", str(hf), "--checkpoint", str(mc),
                                 "--seq-len", "16"])
    for step in ("hf_to_mcore", "mcore_to_hf", "verify"):
        extra = report[step]["peak_rss_bytes"] - report["baseline"]["peak_rss_bytes"]
        report[step]["peak_over_baseline_x_model"] = round(extra / model_bytes, 2)
        report[step]["peak_x_model"] = round(report[step]["peak_rss_bytes"] / model_bytes, 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
