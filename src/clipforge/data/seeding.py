"""Counter-based seeds: every random choice of the data layer is a pure function of integers.

Exact resume needs each draw (an epoch's permutation, a shard order, a sample's augmentation, a caption
template) to depend only on *where* it happens (seed, epoch, rank, position, ...), never on how many draws came
before. `derive_seed(*parts)` hashes a tuple of integers to 64 bits with SplitMix64 (Steele et al., "Fast
splittable pseudorandom number generators", OOPSLA 2014) chained over the parts; `derive_seeds` is the same
function vectorised over its last part with numpy uint64 arithmetic (wrapping, as in the scalar version).

The first part of every call is a tag naming the purpose, so two uses of the same coordinates never share a
stream.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB

# Purposes (the first part of every derived seed).
PERMUTATION = 1  # map-style source: order of one pass over the items
SHARD_ORDER = 2  # wds: order of one pass over the shards
MIXING = 3  # which source fills each slot of a worker's stream
AUGMENT = 4  # the transform's random draws for one sample slot
CAPTION = 5  # template choice for a sample slot (fashion_mnist)
REPLACEMENT = 6  # substitute for a bad sample
RESAMPLE = 7  # wds with replacement: a worker's endless shard sequence
SHUFFLE = 8  # wds: the sample shuffle buffer of one worker


def _splitmix(x: int) -> int:
    x = (x + _GOLDEN) & MASK64
    x = ((x ^ (x >> 30)) * _MUL1) & MASK64
    x = ((x ^ (x >> 27)) * _MUL2) & MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """A 64-bit seed that depends on every part (ints of any sign; taken modulo 2**64)."""
    state = 0
    for part in parts:
        state = _splitmix(state ^ (int(part) & MASK64))
    return state


def derive_seeds(prefix: tuple[int, ...], last: np.ndarray) -> np.ndarray:
    """`derive_seed(*prefix, x)` for every x of `last` (non-negative ints), as a uint64 array of the same shape."""
    base = np.uint64(derive_seed(*prefix)) if prefix else np.uint64(0)
    x = np.asarray(last).astype(np.uint64) ^ base
    x = x + np.uint64(_GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_MUL1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_MUL2)
    return x ^ (x >> np.uint64(31))


def generator(*parts: int) -> np.random.Generator:
    """A numpy Generator seeded from `derive_seed(*parts)`."""
    return np.random.default_rng(derive_seed(*parts))
