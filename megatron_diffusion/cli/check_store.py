"""``megatron-diffusion check-store STORE [STORE ...] [--tokenizer TOK]``: verify every chunk file's checksum.

Reads every byte of every chunk file listed in ``STORE/checksums.json`` (written by
``preprocess``) and compares size and CRC-32, then decodes every token chunk and checks that its
ids lie inside the store's vocabulary. Prints one line per problem (a missing, truncated or
corrupted file, an id out of range) and exits 2 if there was any; prints a summary line per good
store.

A Megatron ``.bin``/``.idx`` prefix (with ``--tokenizer``, the ``data.tokenizer`` it is read
with) has no checksums: every token is read and checked against the tokenizer (ids inside its
vocabulary, no [MASK], every document ending with its EOS), what the trainer checks per row.
"""

import sys

from megatron_diffusion.errors import UsageError


def add_arguments(p) -> None:
    p.add_argument("stores", nargs="+", metavar="STORE",
                   help="token stores (.zarr directories) or Megatron .bin/.idx prefixes")
    p.add_argument("--tokenizer", default=None,
                   help="the tokenizer.json .bin/.idx datasets were made with (data.tokenizer)")


def indexed_problems(prefix: str, tokenizer) -> list[str]:
    """Every token of a Megatron dataset checked against ``tokenizer`` (a path)."""
    from megatron_diffusion.data.indexed import IndexedTokenSource
    from megatron_diffusion.data.tokenizer import load_tokenizer

    if tokenizer is None:
        raise UsageError(f"--tokenizer: {prefix} is a Megatron indexed dataset, whose files record "
                         "no tokenizer; name the tokenizer.json it was made with")
    return IndexedTokenSource(prefix, load_tokenizer(tokenizer)).verify()


def token_id_problems(store) -> list[str]:
    """One message per token chunk whose ids fall outside ``[0, vocab_size)``."""
    from megatron_diffusion.data.store import TokenStore

    opened = TokenStore(store)
    chunk = opened._tokens.chunks[0]
    problems = []
    for c in range(-(-opened.num_tokens // chunk)):
        try:
            opened._decode_chunk(c)
        except UsageError as e:
            problems.append(str(e).removeprefix(f"store {store}: "))
    return problems


def zarr_problems(store) -> tuple[list[str], str]:
    """Problems of a zarr store (checksums, then ids), and what was verified."""
    from megatron_diffusion.data import checksums

    if not (store / "zarr.json").is_file():
        raise UsageError(f"store {store}: not a token store (no zarr.json) nor a Megatron "
                         "dataset (no .bin/.idx beside this prefix)")
    try:
        manifest = checksums.read_manifest(store)
    except ValueError as e:
        raise UsageError(f"store {store}: {e}") from None
    if manifest is None:
        raise UsageError(f"store {store}: no {checksums.MANIFEST} (written before checksums "
                         "existed; re-run preprocess to get one)")
    problems = checksums.verify(store, manifest) or token_id_problems(store)
    return problems, f"{len(manifest['files'])} chunk files verified"


def _problems(store, prefix, tokenizer) -> tuple[str, list[str], str]:
    """``(name, problems, what was verified)`` of one store or prefix; a store that cannot even
    be opened is one problem, so the other stores are still checked."""
    name = f"store {store}" if prefix is None else f"indexed dataset {prefix}"
    try:
        if prefix is None:
            return (name, *zarr_problems(store))
        return name, indexed_problems(prefix, tokenizer), "every token and document end read"
    except UsageError as e:
        return name, [str(e).removeprefix(f"{name}: ")], ""


def run(args) -> int:
    from pathlib import Path

    from megatron_diffusion.data.indexed import indexed_prefix

    stores = [(Path(s), indexed_prefix(s)) for s in args.stores]
    first_indexed = next((prefix for _, prefix in stores if prefix is not None), None)
    if first_indexed is not None and args.tokenizer is None:
        indexed_problems(first_indexed, None)  # the one-line --tokenizer refusal, nothing read
    bad = 0
    for store, prefix in stores:
        name, problems, verified = _problems(store, prefix, args.tokenizer)
        for p in problems:
            print(f"{name}: {p}", file=sys.stderr)
        bad += bool(problems)
        if not problems:
            print(f"{name}: ok, {verified}")
    if bad:
        raise UsageError(f"{bad} of {len(args.stores)} stores failed the check")
    return 0
