"""``megatron-diffusion check-store STORE [STORE ...]``: verify every chunk file's checksum.

Reads every byte of every chunk file listed in ``STORE/checksums.json`` (written by
``preprocess``) and compares size and CRC-32. Prints one line per problem (a missing, truncated
or corrupted file) and exits 2 if there was any; prints a summary line per good store.
"""

import sys

from megatron_diffusion.errors import UsageError


def add_arguments(p) -> None:
    p.add_argument("stores", nargs="+", metavar="STORE", help="token stores (.zarr directories)")


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
        problems = checksums.verify(store, manifest)
        for p in problems:
            print(f"store {store}: {p}", file=sys.stderr)
        bad += bool(problems)
        if not problems:
            print(f"store {store}: ok, {len(manifest['files'])} chunk files verified")
    if bad:
        raise UsageError(f"{bad} of {len(args.stores)} stores failed the check")
    return 0
