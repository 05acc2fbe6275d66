"""``megatron-diffusion check-store STORE [STORE ...]``: verify every chunk file's checksum.

Reads every byte of every chunk file listed in ``STORE/checksums.json`` (written by
``preprocess``) and compares size and CRC-32, then decodes every token chunk and checks that its
ids lie inside the store's vocabulary. Prints one line per problem (a missing, truncated or
corrupted file, an id out of range) and exits 2 if there was any; prints a summary line per good
store.
"""

import sys

from megatron_diffusion.errors import UsageError


def add_arguments(p) -> None:
    p.add_argument("stores", nargs="+", metavar="STORE", help="token stores (.zarr directories)")


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


def run(args) -> int:
    from pathlib import Path

    from megatron_diffusion.data import checksums

    bad = 0
    for store in map(Path, args.stores):
        if not (store / "zarr.json").is_file():
            raise UsageError(f"store {store}: not a token store (no zarr.json)")
        try:
            manifest = checksums.read_manifest(store)
        except ValueError as e:
            raise UsageError(f"store {store}: {e}") from None
        if manifest is None:
            raise UsageError(f"store {store}: no {checksums.MANIFEST} (written before checksums "
                             "existed; re-run preprocess to get one)")
        problems = checksums.verify(store, manifest) or token_id_problems(store)
        for p in problems:
            print(f"store {store}: {p}", file=sys.stderr)
        bad += bool(problems)
        if not problems:
            print(f"store {store}: ok, {len(manifest['files'])} chunk files verified")
    if bad:
        raise UsageError(f"{bad} of {len(args.stores)} stores failed the check")
    return 0
