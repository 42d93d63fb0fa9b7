"""A bounded, uniformly random subset of feature rows that merges exactly across shards.

KID and precision/recall need feature vectors, not moments, and 50k x 2048 features do not
belong in memory or in a shard's state file. Each sample gets a priority that is a fixed hash
of its global index (splitmix64), and the subset is the ``size`` rows with the smallest
priorities ("bottom-k" sampling). The chosen rows depend only on which indices were seen, so
one pass and any split into disjoint shards keep exactly the same rows, and the choice is a
uniform random subset without replacement. Features are stored as float32, which is what the
extractors return, so nothing is rounded by keeping them.
"""
from __future__ import annotations

import numpy as np

from common.errors import NfebenchError

_SALT = np.uint64(0x6E666562656E6368)  # fixed: the same index is kept or dropped in every run


def priority(indices) -> np.ndarray:
    """splitmix64 of (index ^ salt): a well-mixed, platform-independent uint64 per index."""
    z = np.asarray(indices, dtype=np.uint64) ^ _SALT
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class FeatureSubset:
    def __init__(self, size: int, dim: int):
        self.size, self.dim = int(size), int(dim)
        self.idx = np.zeros(0, np.int64)
        self.prio = np.zeros(0, np.uint64)
        self.feats = np.zeros((0, dim), np.float32)

    def _keep(self, idx, prio, feats) -> None:
        if len(np.unique(idx)) != len(idx):
            raise NfebenchError("feature subsets overlap: the same sample index was seen twice "
                                "(shards must cover disjoint index ranges)")
        order = np.lexsort((idx, prio))[: self.size]
        self.idx, self.prio, self.feats = idx[order], prio[order], feats[order]

    def update(self, indices, feats) -> None:
        feats = np.asarray(feats, np.float32).reshape(len(feats), self.dim)
        indices = np.asarray(indices, np.int64)
        self._keep(np.concatenate([self.idx, indices]), np.concatenate([self.prio, priority(indices)]),
                   np.concatenate([self.feats, feats]))

    def merge(self, other: "FeatureSubset") -> None:
        self._keep(np.concatenate([self.idx, other.idx]), np.concatenate([self.prio, other.prio]),
                   np.concatenate([self.feats, other.feats]))

    def state(self, prefix: str = "subset_") -> dict:
        return {f"{prefix}idx": self.idx, f"{prefix}prio": self.prio, f"{prefix}feats": self.feats}

    @classmethod
    def from_state(cls, state, size: int, prefix: str = "subset_") -> "FeatureSubset":
        feats = np.asarray(state[f"{prefix}feats"], np.float32)
        s = cls(size, feats.shape[1])
        s._keep(np.asarray(state[f"{prefix}idx"], np.int64), np.asarray(state[f"{prefix}prio"], np.uint64), feats)
        return s
