"""Data: tokenizer, ingest into a zarr token store, and the resumable packing loader.

Flow: ``tokenizer`` (BPE with EOS/[MASK]/pad) -> ``sources`` + ``ingest`` (documents -> zarr
store) -> ``store`` (read-only access, compatibility checks) -> ``index`` (packing plans cached
on disk) -> ``loader`` (blended, sharded, resumable rows; corruption in the workers).
"""
