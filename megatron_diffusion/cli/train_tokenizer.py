"""``megatron-diffusion train-tokenizer``: byte-level BPE with EOS, [MASK] and pad tokens.

    megatron-diffusion train-tokenizer --input Lib/ --glob '*.py' --output tok.json --vocab-size 8192
"""

import argparse
import os
import re
from pathlib import Path

from megatron_diffusion.data.tokenizer import iter_text_files, load_tokenizer, train_tokenizer
from megatron_diffusion.errors import UsageError
from megatron_diffusion.fileio import atomic_path, output_errors
from megatron_diffusion.progress import track


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="text files or directory trees to train on")
    parser.add_argument("--output", required=True, help="where to write tokenizer.json")
    parser.add_argument("--vocab-size", type=int, required=True,
                        help="number of ids, special tokens included")
    parser.add_argument("--glob", default="*",
                        help="file name pattern inside input directories (default: all files)")


def run(args: argparse.Namespace) -> int:
    for p in args.input:
        if not Path(p).exists():
            raise UsageError(f"--input: {p} does not exist")
    counted = [0]

    def texts():
        for text in track(iter_text_files(args.input, args.glob), "train-tokenizer", unit="file"):
            counted[0] += bool(text.strip())
            yield text

    tok = train_tokenizer(texts(), args.vocab_size)
    if not counted[0]:
        raise UsageError(f"--input: no text in {' '.join(args.input)} (files matching --glob "
                         f"{args.glob!r}, UTF-8, not empty)")
    out = Path(args.output)
    with output_errors(out):  # a read-only or full file system: one line naming the output
        out.parent.mkdir(parents=True, exist_ok=True)
    # temp file + rename: an interrupted run never leaves a half-written tokenizer.json
    with atomic_path(out) as tmp:
        _save(tok, tmp)
        loaded = load_tokenizer(tmp)
        if loaded.vocab_size != args.vocab_size:  # too little text for that many merges
            raise UsageError(f"--vocab-size: asked {args.vocab_size}, the corpus gave only "
                             f"{loaded.vocab_size} ids; give more text or a smaller --vocab-size")
    print(f"wrote {out}: vocab_size={loaded.vocab_size} eos={loaded.eos_id} "
          f"mask={loaded.mask_id} pad={loaded.pad_id} hash={loaded.hash[:12]}")
    return 0


def _save(tok, path: Path) -> None:
    """``tok.save``, with an I/O failure raised as the ``OSError`` it is: ``tokenizers`` raises a
    bare ``Exception("Read-only file system (os error 30)")``, which ``atomic_path`` could not
    tell from a bug (a traceback before)."""
    try:
        tok.save(str(path))
    except Exception as e:
        code = re.search(r"\(os error (\d+)\)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None
