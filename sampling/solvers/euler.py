"""Euler on the probability-flow ODE in EDM coordinates: dx/ds = (x - D(x; s)) / s.

With x in EDM coordinates (x / alpha), one step from s_hat to s' is x' = x + (s' - s_hat) d with
d = (x - D) / s_hat, i.e. x' = r x + (1 - r) D with r = s' / s_hat.
Optional stochastic churn before each step (Karras et al. 2022, Algorithm 2; see churn.py).
"""
from __future__ import annotations

import torch

from ..registry import register_solver
from .churn import churn_, churn_describe, churn_plan
from .grid import grid_coeffs, per_run, scaled


@per_run
def _plan(noise, ts, S_churn, S_tmin, S_tmax, S_noise):
    g = grid_coeffs(noise, ts)
    t_hat, a_hat, s_hat, std = churn_plan(noise, g, S_churn, S_tmin, S_tmax, S_noise)
    return g, [(std[i], a_hat[i], t_hat[i], g.s[i + 1] / s_hat[i]) for i in range(len(ts) - 1)]


@register_solver("euler", describe=churn_describe, stochastic=True)
def sample_euler(model, x, ts, noise, rng=None, S_churn: float = 0.0, S_tmin: float = 0.0,
                 S_tmax: float | None = None, S_noise: float = 1.0):
    g, steps = _plan(noise, ts, S_churn, S_tmin, S_tmax, S_noise)
    x = x / g.alpha[0]
    inp = torch.empty_like(x)
    for std, a_hat, t_hat, r in steps:
        churn_(x, std, rng)
        x0 = model(scaled(x, a_hat, inp), t_hat)
        x.lerp_(x0, 1.0 - r)  # r x + (1 - r) D in one pass
    return x.mul_(g.alpha[-1])
