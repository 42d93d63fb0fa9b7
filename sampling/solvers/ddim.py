"""DDIM (Song, Meng & Ermon 2021), written for any (alpha, sigma) schedule.

eta=0 is the deterministic sampler (the first-order exponential integrator); eta=1 matches the
DDPM posterior variance. With h = lambda_next - lambda, the injected noise std is
c = eta * sigma_next * sqrt(1 - exp(-2h)).
"""
from __future__ import annotations

import math

from ..registry import register_solver
from .grid import grid_coeffs


@register_solver("ddim", stochastic=True)
def sample_ddim(model, x, ts, noise, rng=None, eta: float = 0.0):
    g = grid_coeffs(noise, ts)
    steps = len(ts) - 1
    c = [eta * g.sigma[i + 1] * math.sqrt(-math.expm1(-2 * (g.lam[i + 1] - g.lam[i]))) for i in range(steps)]
    keep = [math.sqrt(max(g.sigma[i + 1] ** 2 - c[i] ** 2, 0.0)) for i in range(steps)]
    for i in range(steps):
        x0 = model(x, g.t[i])
        eps = (x - g.alpha[i] * x0) / g.sigma[i]
        x = g.alpha[i + 1] * x0 + keep[i] * eps
        if c[i] > 0:
            x = x + c[i] * rng.like(x)
    return x
