#!/usr/bin/env python
"""Megatron-style ``preprocess_data.py`` flags on top of ``megatron-diffusion preprocess``.

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \
        --tokenizer-model tokenizer.json --json-keys text --workers 8

writes ``data/corpus.zarr`` (a zarr token store, not Megatron's .bin/.idx). Two ``--json-keys``
mean an SFT store: ``--json-keys prompt response``.
"""

import argparse
import sys

from megatron_diffusion.data.ingest import IngestConfig, preprocess
from megatron_diffusion.errors import UsageError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", nargs="+", required=True, help="jsonl/parquet/dataset dir/source tree")
    p.add_argument("--output-prefix", required=True, help="writes OUTPUT_PREFIX.zarr")
    p.add_argument("--tokenizer-model", required=True, help="tokenizer.json with EOS and [MASK]")
    p.add_argument("--json-keys", nargs="+", default=["text"],
                   help="one key (CPT text) or two (SFT prompt, response)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--validation-fraction", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--glob", default="*")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        if len(args.json_keys) not in (1, 2):
            raise UsageError(f"--json-keys: got {args.json_keys}, expected 1 (text) or 2 (prompt response)")
        sft = len(args.json_keys) == 2
        cfg = IngestConfig(
            inputs=args.input, output=f"{args.output_prefix}.zarr", tokenizer=args.tokenizer_model,
            text_field=args.json_keys[0], prompt_field=args.json_keys[0] if sft else None,
            response_field=args.json_keys[1] if sft else None, workers=args.workers,
            validation_fraction=args.validation_fraction, seed=args.seed, glob=args.glob,
            overwrite=args.overwrite,
        )
        summary = preprocess(cfg)
    except UsageError as e:
        print(f"preprocess_data.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {cfg.output}: {summary['num_docs']} docs, {summary['num_tokens']} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
