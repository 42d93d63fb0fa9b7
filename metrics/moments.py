"""Streaming float64 mean and covariance that merge exactly across batches and shards.

Chan et al.'s pairwise update keeps (n, mean, M2) instead of raw sums of squares, which
avoids cancellation when the mean is large relative to the spread.
"""
from __future__ import annotations

import numpy as np


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
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_state(cls, state) -> "RunningMoments":
        m = cls(len(state["mean"]))
        m.n, m.mean, m.m2 = int(state["n"]), np.asarray(state["mean"]), np.asarray(state["m2"])
        return m
