"""What a metric keeps of the images it has seen: float64 moments, Inception-Score sums and a bounded
feature subset. Nothing is kept per image, and each piece merges exactly across batches and shards,
which is how 50k samples never sit in memory and shards of one run become one result.

- RunningMoments: Chan et al.'s pairwise update keeps (n, mean, M2) instead of raw sums of
  squares, which avoids cancellation when the mean is large relative to the spread.
- InceptionSums: IS = exp(E_x[sum_y p log p] - sum_y pbar log pbar) with pbar = E_x[p(y|x)] needs
  only sum_x p(y|x) and sum_x sum_y p log p: a single split over all samples (the common 10-split
  mean would depend on sample order across shards).
- FeatureSubset: KID and precision/recall need feature rows, not moments. Each sample gets a
  priority that is a fixed hash of its global index (splitmix64) and the subset is the ``size``
  rows with the smallest priorities ("bottom-k"), so one pass and any split into disjoint shards
  keep exactly the same rows: a uniform random subset without replacement. Rows stay float32,
  what the extractors return.
- FeatureStream: the three together, for one side of a comparison (samples or a reference).
"""
from __future__ import annotations

import numpy as np
import torch

from common.errors import NfebenchError


class RunningMoments:
    def __init__(self, dim: int):
        self.n = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros((dim, dim))

    def update(self, x) -> "RunningMoments":
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        other = RunningMoments(x.shape[1])
        other.n = len(x)
        other.mean = x.mean(0)
        xc = x - other.mean
        other.m2 = xc.T @ xc
        return self.merge(other)

    def merge(self, other: "RunningMoments") -> "RunningMoments":
        n = self.n + other.n
        if other.n == 0:
            return self
        delta = other.mean - self.mean
        self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n = n
        return self

    def cov(self) -> np.ndarray:
        """Unbiased sample covariance (divides by n - 1), as FID implementations do."""
        return self.m2 / max(self.n - 1, 1)

    def state(self) -> dict:
        return {"n": np.asarray(self.n), "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_state(cls, state) -> "RunningMoments":
        m = cls(len(state["mean"]))
        m.n, m.mean, m.m2 = int(state["n"]), np.asarray(state["mean"]), np.asarray(state["m2"])
        return m


def inception_score(n, p_sum, plogp_sum) -> float:
    pbar = np.asarray(p_sum, np.float64) / n
    pbar_log = np.where(pbar > 0, pbar * np.log(np.where(pbar > 0, pbar, 1.0)), 0.0)
    return float(np.exp(plogp_sum / n - pbar_log.sum()))


class InceptionSums:
    def __init__(self, num_classes: int):
        self.p_sum = np.zeros(num_classes)
        self.plogp_sum = 0.0

    def update(self, logits: torch.Tensor) -> None:
        logp = torch.log_softmax(logits.double(), dim=1)
        p = logp.exp()
        self.p_sum += p.sum(0).cpu().numpy()
        self.plogp_sum += float((p * logp).sum())

    def state(self) -> dict:
        return {"is_p_sum": self.p_sum, "is_plogp_sum": np.asarray(self.plogp_sum)}

    def merge_state(self, state) -> None:
        self.p_sum = self.p_sum + np.asarray(state["is_p_sum"])
        self.plogp_sum += float(state["is_plogp_sum"])


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


class FeatureStream:
    """One side of a comparison, fed (indices, features, logits) batch by batch.

    Inception-Score sums grow only from batches given logits; subset_size 0 keeps no feature rows.
    """

    def __init__(self, dim: int, num_classes: int = 0, subset_size: int = 0):
        self.moments = RunningMoments(dim)
        self.inception = InceptionSums(num_classes)
        self.subset = FeatureSubset(subset_size, dim) if subset_size else None

    def update(self, indices, feats: torch.Tensor, logits: torch.Tensor | None = None) -> None:
        feats = feats.double().cpu().numpy()
        self.moments.update(feats)
        if self.subset is not None:
            self.subset.update(indices, feats)
        if logits is not None:
            self.inception.update(logits)

    def state(self) -> dict:
        return {**self.moments.state(), **self.inception.state(),
                **(self.subset.state() if self.subset is not None else {})}

    def merge_state(self, state) -> None:
        self.moments.merge(RunningMoments.from_state(state))
        self.inception.merge_state(state)
        if self.subset is not None:
            self.subset.merge(FeatureSubset.from_state(state, self.subset.size))
