"""Fréchet distance between two Gaussians, in float64.

d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2). The symmetric form
needs only eigh of PSD matrices, so there is no complex sqrtm and no imaginary residue.
"""
from __future__ import annotations

import numpy as np


def _psd_sqrt(s):
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    r1 = _psd_sqrt(cov1)
    cross = np.linalg.eigvalsh(r1 @ cov2 @ r1)
    tr_cross = np.sqrt(np.clip(cross, 0, None)).sum()
    d = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * tr_cross)
    return max(d, 0.0)
