"""``megatron-diffusion convert {hf-to-mcore,gguf-to-mcore,mcore-to-hf,reshard,verify}``
(docs/convert.md)."""

import argparse

from megatron_diffusion.errors import UsageError

PARAMS_DTYPES = ("float32", "bfloat16")


def _size_bytes(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    for unit, scale in sorted(units.items(), key=lambda u: -len(u[0])):
        if t.endswith(unit):
            try:
                value = float(t[: -len(unit)])
            except ValueError:
                break
            if value > 0:
                return int(value * scale)
    raise argparse.ArgumentTypeError(f"expected a size like 5GB or 500MB, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="convert_command", metavar="CONVERSION",
                                parser_class=type(parser))
    sub.required = True

    p = sub.add_parser("hf-to-mcore", help="HF Llama/Qwen2/Qwen3 safetensors -> "
                       "megatron-diffusion checkpoint (train --init-from OUT)")
    p.add_argument("--hf", required=True, help="HF model directory (config.json, safetensors, "
                   "tokenizer.json)")
    p.add_argument("--out", required=True, help="output run directory (checkpoints/iter_0000000)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size the checkpoint is "
                   "meant for: validated, recorded, vocabulary padded for it (default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size: validated and "
                   "recorded (default 1)")
    p.add_argument("--add-mask-token", action="store_true", help="add [MASK] to the tokenizer "
                   "and grow the embedding/output layer (new row = mean of the existing rows)")
    _add_import_options(p)

    p = sub.add_parser("gguf-to-mcore", help="llama.cpp GGUF (Llama/Qwen2/Qwen3; F32/F16/BF16/Q8_0/"
                       "Q4_0/Q4_1/Q4_K/Q6_K) -> megatron-diffusion checkpoint (dequantised)")
    p.add_argument("--gguf", required=True, help="the .gguf file")
    p.add_argument("--out", required=True, help="output run directory (checkpoints/iter_0000000)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size the checkpoint is "
                   "meant for (default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default 1)")
    p.add_argument("--add-mask-token", action="store_true", help="add [MASK] to the tokenizer "
                   "and grow the embedding/output layer (new row = mean of the existing rows)")
    _add_import_options(p)

    p = sub.add_parser("mcore-to-hf", help="megatron-diffusion checkpoint -> HF safetensors, "
                       "config (with a 'diffusion' block) and tokenizer")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, or run dir (its latest)")
    p.add_argument("--out", required=True, help="output HF directory")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="dtype of the exported tensors (default: the checkpoint's)")
    p.add_argument("--max-shard-size", type=_size_bytes, default="5GB",
                   help="largest safetensors shard (default 5GB)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("reshard", help="rewrite a checkpoint as saved by a TP=N, PP=M job "
                       "(weights only; launches N*M local processes unless under torchrun)")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, or run dir (its latest)")
    p.add_argument("--out", required=True, help="output run directory")
    p.add_argument("--tp", type=int, required=True, help="tensor-parallel size")
    p.add_argument("--pp", type=int, required=True, help="pipeline-parallel size")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = sub.add_parser("verify", help="run the HF model and the checkpoint causally on the same "
                       "random tokens; print the max |logit diff|; exit 1 above --tolerance")
    p.add_argument("--hf", required=True, help="HF model directory")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, or run dir (its latest)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed max |logit "
                   "diff| in float32 (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=2, help="random sequences (default 2)")
    p.add_argument("--seq-len", type=int, default=32, help="tokens per sequence (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random tokens")


def _add_import_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eos-token", default=None, metavar="TOKEN",
                   help="the token that ends documents in the data (default: '<|endoftext|>' or "
                   "the tokenizer's '</s>'-like special token); the model's own stop tokens "
                   "are kept in meta.json generation.stop_token_ids either way")
    p.add_argument("--params-dtype", choices=PARAMS_DTYPES, default=None,
                   help="stored dtype (default: bfloat16 for a bf16 model, else float32)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _import(args) -> int:
    """``hf-to-mcore`` / ``gguf-to-mcore``: the same options, another reader."""
    if args.convert_command == "hf-to-mcore":
        from megatron_diffusion.convert.hf_to_mcore import convert_hf_to_mcore as convert

        source = args.hf
    else:
        from megatron_diffusion.convert.gguf_to_mcore import convert_gguf_to_mcore as convert

        source = args.gguf
    path = convert(source, args.out, tensor_model_parallel_size=args.tp,
                   pipeline_model_parallel_size=args.pp, add_mask_token=args.add_mask_token,
                   eos_token=args.eos_token, params_dtype=args.params_dtype, force=args.force,
                   progress=not args.no_progress)
    print(f"wrote {path}")
    return 0


def run(args) -> int:
    command = args.convert_command
    if command in ("hf-to-mcore", "gguf-to-mcore"):
        return _import(args)
    if command == "mcore-to-hf":
        from megatron_diffusion.convert.mcore_to_hf import convert_mcore_to_hf

        path = convert_mcore_to_hf(args.checkpoint, args.out, dtype=args.dtype,
                                   max_shard_bytes=args.max_shard_size, force=args.force,
                                   progress=not args.no_progress)
        print(f"wrote {path}")
        return 0
    if command == "reshard":
        from megatron_diffusion.convert.reshard import reshard

        return reshard(args.checkpoint, args.out, tensor_model_parallel_size=args.tp,
                       pipeline_model_parallel_size=args.pp, force=args.force)
    if command == "verify":
        from megatron_diffusion.convert.verify import verify

        if not args.tolerance >= 0:
            raise UsageError(f"--tolerance: got {args.tolerance}, expected a number >= 0")
        result = verify(args.hf, args.checkpoint, batch_size=args.batch_size,
                        seq_len=args.seq_len, seed=args.seed, tolerance=args.tolerance)
        print(result.summary())
        return 0 if result.passed else 1
    raise UsageError(f"convert: unknown conversion {command!r}")
