"""``megatron-diffusion preprocess``: tokenize inputs into a zarr v3 token store.

    megatron-diffusion preprocess --input data/*.jsonl.gz --output code.zarr --tokenizer tok.json
    megatron-diffusion preprocess --input "$(python -c 'import sysconfig;print(sysconfig.get_paths()["stdlib"])')" \
        --glob '*.py' --output stdlib.zarr --tokenizer tok.json --workers 2
"""

import argparse

from megatron_diffusion.data.ingest import IngestConfig, preprocess


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="jsonl(.gz)/parquet files, saved HF dataset dirs, or source trees")
    parser.add_argument("--output", required=True, help="store to create, e.g. corpus.zarr")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json with EOS and [MASK]")
    parser.add_argument("--text-field", default="text", help="record field of a CPT document")
    parser.add_argument("--prompt-field", default=None, help="SFT: record field of the prompt")
    parser.add_argument("--response-field", default=None, help="SFT: record field of the response")
    parser.add_argument("--validation-fraction", type=float, default=0.01,
                        help="fraction of documents held out for validation")
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    parser.add_argument("--on-undecodable", default="skip", choices=("skip", "error"),
                        help="what to do with a file/line that is not UTF-8")
    parser.add_argument("--glob", default="*", help="file pattern inside source directories")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the train/validation split")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store")


def config_from_args(args: argparse.Namespace) -> IngestConfig:
    return IngestConfig(
        inputs=list(args.input), output=args.output, tokenizer=args.tokenizer,
        text_field=args.text_field, prompt_field=args.prompt_field,
        response_field=args.response_field, validation_fraction=args.validation_fraction,
        workers=args.workers, on_undecodable=args.on_undecodable, glob=args.glob,
        seed=args.seed, overwrite=args.overwrite,
    )


def run(args: argparse.Namespace) -> int:
    summary = preprocess(config_from_args(args))
    print(f"wrote {args.output}: {summary['num_docs']} docs ({summary['num_validation_docs']} "
          f"validation), {summary['num_tokens']} tokens, mode={summary['mode']}")
    if summary["num_undecodable_skipped"]:
        print(f"skipped {summary['num_undecodable_skipped']} undecodable files/lines, e.g. "
              + "; ".join(summary["undecodable_examples"]))
    return 0
