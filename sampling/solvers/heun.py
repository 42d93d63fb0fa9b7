"""EDM's 2nd-order Heun sampler (Karras et al. 2022, Algorithms 1 and 2).

EDM's last step goes to sigma = 0 and so takes no correction: N steps cost 2N - 1 model
evaluations. ``final_euler`` keeps that rule (default); false corrects every step (2N).
S_churn > 0 adds EDM's stochastic churn before each step (see euler.py); default off.
"""
from __future__ import annotations

from ..registry import register_solver
from .euler import churn_describe, churn_plan, churned
from .grid import grid_coeffs


def _steps(nfe, final_euler=True, **_):
    return (nfe + 1) // 2 if final_euler else nfe // 2


def _cost(steps, final_euler=True, **_):
    return 2 * steps - 1 if final_euler else 2 * steps


@register_solver("heun", steps=_steps, cost=_cost, describe=churn_describe, stochastic=True)
def sample_heun(model, x, ts, noise, rng=None, final_euler: bool = True, S_churn: float = 0.0,
                S_tmin: float = 0.0, S_tmax: float | None = None, S_noise: float = 1.0):
    g = grid_coeffs(noise, ts)
    t_hat, a_hat, s_hat, std = churn_plan(noise, g, S_churn, S_tmin, S_tmax, S_noise)
    n = len(ts) - 1
    x = x / g.alpha[0]
    for i in range(n):
        x = churned(x, std[i], rng)
        ds = g.s[i + 1] - s_hat[i]
        d = (x - model(a_hat[i] * x, t_hat[i])) / s_hat[i]
        x_next = x + ds * d
        if i < n - 1 or not final_euler:
            d_next = (x_next - model(g.alpha[i + 1] * x_next, g.t[i + 1])) / g.s[i + 1]
            x_next = x + ds * 0.5 * (d + d_next)
        x = x_next
    return g.alpha[-1] * x
