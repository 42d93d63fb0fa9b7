"""Host-side per-grid-point quantities, computed once before a solver loop."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GridCoeffs:
    t: list        # model times
    alpha: list
    sigma: list
    lam: list      # log(alpha / sigma)
    s: list        # EDM sigma = sigma / alpha


def grid_coeffs(noise, ts) -> GridCoeffs:
    ts = np.asarray(ts, dtype=np.float64)
    as_list = lambda v: [float(u) for u in np.broadcast_to(v, ts.shape)]  # noqa: E731
    return GridCoeffs(as_list(ts), as_list(noise.alpha(ts)), as_list(noise.sigma(ts)), as_list(noise.lam(ts)),
                      as_list(noise.edm_sigma(ts)))
