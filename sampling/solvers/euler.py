"""Euler on the probability-flow ODE in EDM coordinates: dx/ds = (x - D(x; s)) / s.

With x in EDM coordinates (x / alpha), one step from s_hat to s' is x' = x + (s' - s_hat) d with
d = (x - D) / s_hat, i.e. x' = r x + (1 - r) D with r = s' / s_hat. The loop keeps x in the schedule's
own coordinates (alpha times that), with the alphas in the two weights, so the model reads x as it is.
Optional stochastic churn before each step (Karras et al. 2022, Algorithm 2; see churn.py).
"""
from __future__ import annotations

from ..registry import register_solver
from .churn import churn_describe, churn_plan, churn_vp_
from .grid import grid_coeffs, per_run


@per_run
def _plan(noise, ts, S_churn, S_tmin, S_tmax, S_noise):
    """Per step, in the schedule's coordinates x = alpha x_edm: the churn (scale, noise std), t_hat and
    the step x' = alpha' (r x / alpha_hat + (1 - r) D) as (alpha' r / alpha_hat, alpha' (1 - r))."""
    g = grid_coeffs(noise, ts)
    t_hat, a_hat, s_hat, std = churn_plan(noise, g, S_churn, S_tmin, S_tmax, S_noise)
    out = []
    for i in range(len(ts) - 1):
        r, a1 = g.s[i + 1] / s_hat[i], g.alpha[i + 1]
        out.append((a_hat[i] / g.alpha[i], a_hat[i] * std[i], t_hat[i], a1 * r / a_hat[i], a1 * (1.0 - r)))
    return out


@register_solver("euler", describe=churn_describe, stochastic=True)
def sample_euler(model, x, ts, noise, rng=None, S_churn: float = 0.0, S_tmin: float = 0.0,
                 S_tmax: float | None = None, S_noise: float = 1.0):
    x = x.clone()  # the caller's x is never written
    for churn, std, t_hat, c_x, c_0 in _plan(noise, ts, S_churn, S_tmin, S_tmax, S_noise):
        churn_vp_(x, churn, std, rng)
        x0 = model(x, t_hat)
        x.mul_(c_x).add_(x0, alpha=c_0)
    return x
