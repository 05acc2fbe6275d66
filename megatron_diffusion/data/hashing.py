"""Counter-based random numbers: a value per (seed, key...) with no generator state.

Ingest assigns each document to train/validation and the loader draws each SFT sample's EOS
count from a hash of integers rather than from a sequential generator, so any rank or worker can
compute the value for any index in O(1), vectorised over numpy arrays, and the result never
depends on processing order. The mixer is splitmix64's finaliser (Steele et al. 2014), which
passes BigCrush when fed a counter.
"""

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def hash_keys(*keys) -> np.ndarray:
    """Hash a tuple of integer keys (scalars or broadcastable int arrays) to uint64."""
    h = np.uint64(0x6A09E667F3BCC908)
    for k in keys:
        k = np.asarray(k).astype(np.int64).astype(np.uint64)  # negative keys wrap, still distinct
        h = mix64(np.bitwise_xor(h, k))
    return h


def uniform(*keys) -> np.ndarray:
    """A float64 in [0, 1) per key tuple."""
    return (hash_keys(*keys) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def randint(low: int, high: int, *keys) -> np.ndarray:
    """An int64 uniform in ``[low, high]`` (inclusive) per key tuple."""
    span = high - low + 1
    return low + (hash_keys(*keys) % np.uint64(span)).astype(np.int64)


def seed_from(*keys) -> int:
    """A 63-bit seed for ``torch.Generator.manual_seed`` / ``np.random.default_rng``."""
    return int(hash_keys(*keys) >> np.uint64(1))
