"""``megatron-diffusion show-mask``: write the boolean attention mask a mode uses, as JSON or PNG.

The matrix is exactly what the model uses (``dense.attention_allowed``): rows are queries,
columns keys, True = may attend. In block mode it is the ``2L x 2L`` matrix over the model input
``x_t (+) x0``. The PNG labels the noisy/clean halves and draws block and document boundaries, so
a person can check a configuration before spending GPU hours on it. Output is written to a
temporary file and renamed, so a failed run never leaves a partial file.
"""

import json
import os

import torch

from megatron_diffusion import layout
from megatron_diffusion.errors import UsageError, check_choice
from megatron_diffusion.fileio import atomic_path
from megatron_diffusion.masks.config import CLEAN_STREAMS, MODES, AttentionConfig
from megatron_diffusion.masks.dense import attention_allowed

FORMATS = ("json", "png")
# config field -> command-line option, so messages name what the user typed
_OPTIONS = {f: "--" + f.replace("_", "-") for f in ("mode", "block_size", "visibility", "clean_stream", "seq_len")}


def add_arguments(parser) -> None:
    d = AttentionConfig()
    parser.add_argument("--mode", required=True, metavar="{" + ",".join(MODES) + "}",
                        help="attention mode")
    parser.add_argument("--seq-len", type=int, required=True, metavar="L",
                        help="clean tokens per row (block mode shows 2L x 2L)")
    parser.add_argument("--block-size", type=int, default=d.block_size, metavar="B",
                        help=f"diffusion block size, block mode only (default {d.block_size})")
    parser.add_argument("--doc-lengths", default=None, metavar="N,N,...",
                        help="packed document lengths summing to --seq-len (default: one document)")
    parser.add_argument("--visibility", default=d.visibility, metavar="{" + ",".join(layout.VISIBILITIES) + "}",
                        help=f"packed documents see each other (shared) or not (isolated); default {d.visibility}")
    parser.add_argument("--clean-stream", default=d.clean_stream, metavar="{" + ",".join(CLEAN_STREAMS) + "}",
                        help=f"block mode: clean copy attends block-causally or causally; default {d.clean_stream}")
    parser.add_argument("--format", default=None, metavar="{json,png}",
                        help="output format (default: from the --out suffix)")
    parser.add_argument("--out", required=True, metavar="FILE", help="output file")


def _as_option(e: UsageError) -> UsageError:
    """Rename a config field at the head of a message to its command-line option."""
    msg = str(e)
    for field, option in _OPTIONS.items():
        if msg.startswith(field + ":"):
            msg = option + msg[len(field):]
    return UsageError(msg.replace(" seq_len ", " --seq-len "))


def parse_doc_lengths(text: str | None, seq_len: int) -> list[int]:
    if text is None:
        return [seq_len]
    try:
        lengths = [int(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"--doc-lengths: got {text!r}, expected comma-separated positive integers") from None
    if any(n <= 0 for n in lengths):
        raise UsageError(f"--doc-lengths: got {text!r}, expected comma-separated positive integers")
    if sum(lengths) != seq_len:
        raise UsageError(f"--doc-lengths: got {text!r} (sum {sum(lengths)}), expected lengths summing to --seq-len {seq_len}")
    return lengths


def _output_format(fmt: str | None, out: str) -> str:
    if fmt is None:
        fmt = os.path.splitext(out)[1].lstrip(".").lower()
        if fmt not in FORMATS:
            raise UsageError(f"--format: not given and --out {out!r} ends neither in .json nor .png")
    check_choice("--format", fmt, FORMATS)
    return fmt


def _write_atomically(out: str, write) -> None:
    """Call ``write(path)`` on a temporary file next to ``out``, then rename it to ``out``."""
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise UsageError(f"--out: directory {directory!r} does not exist")
    with atomic_path(out) as tmp:
        write(str(tmp))


def settings_dict(cfg: AttentionConfig, seq_len: int, doc_lengths: list[int]) -> dict:
    d = {"mode": cfg.mode, "seq_len": seq_len}
    if cfg.mode == "block":
        d["block_size"] = cfg.block_size
        d["clean_stream"] = cfg.clean_stream
    d["visibility"] = cfg.visibility
    d["doc_lengths"] = doc_lengths
    return d


def run(args) -> int:
    if args.seq_len <= 0:
        raise UsageError(f"--seq-len: got {args.seq_len}, expected a positive integer")
    cfg = AttentionConfig(args.mode, args.block_size, args.visibility, args.clean_stream)
    try:
        cfg.validate().check_seq_len(args.seq_len)
    except UsageError as e:
        raise _as_option(e) from None
    doc_lengths = parse_doc_lengths(args.doc_lengths, args.seq_len)
    fmt = _output_format(args.format, args.out)
    document_ids_BL = layout.document_ids_from_lengths(doc_lengths).unsqueeze(0)
    allowed_SS = attention_allowed(cfg, document_ids_BL)[0]
    settings = settings_dict(cfg, args.seq_len, doc_lengths)

    if fmt == "json":
        payload = dict(settings, rows="query", columns="key", mask=allowed_SS.tolist())

        def write(path):
            with open(path, "w") as f:
                json.dump(payload, f)
                f.write("\n")
    else:
        from megatron_diffusion.masks.plot import draw_mask

        def write(path):
            draw_mask(allowed_SS, cfg, document_ids_BL[0], settings, path)

    _write_atomically(args.out, write)
    print(f"wrote {args.out} ({fmt}, {allowed_SS.shape[0]}x{allowed_SS.shape[1]})")
    return 0
