"""Euler on the probability-flow ODE in EDM coordinates: dx/ds = (x - D(x; s)) / s."""
from __future__ import annotations

from ..registry import register_solver
from .grid import grid_coeffs


@register_solver("euler")
def sample_euler(model, x, ts, noise, rng=None):
    g = grid_coeffs(noise, ts)
    x = x / g.alpha[0]
    for i in range(len(ts) - 1):
        d = (x - model(g.alpha[i] * x, g.t[i])) / g.s[i]
        x = x + (g.s[i + 1] - g.s[i]) * d
    return g.alpha[-1] * x
