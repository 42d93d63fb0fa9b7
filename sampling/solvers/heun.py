"""EDM's deterministic 2nd-order Heun sampler (Karras et al. 2022, Algorithm 1).

EDM's last step goes to sigma = 0 and so takes no correction: N steps cost 2N - 1 model
evaluations. ``final_euler`` keeps that rule (default); false corrects every step (2N).
"""
from __future__ import annotations

from ..registry import register_solver
from .grid import grid_coeffs


def _steps(nfe, final_euler=True, **_):
    return (nfe + 1) // 2 if final_euler else nfe // 2


def _cost(steps, final_euler=True, **_):
    return 2 * steps - 1 if final_euler else 2 * steps


@register_solver("heun", steps=_steps, cost=_cost)
def sample_heun(model, x, ts, noise, rng=None, final_euler: bool = True):
    g = grid_coeffs(noise, ts)
    n = len(ts) - 1
    x = x / g.alpha[0]
    for i in range(n):
        ds = g.s[i + 1] - g.s[i]
        d = (x - model(g.alpha[i] * x, g.t[i])) / g.s[i]
        x_next = x + ds * d
        if i < n - 1 or not final_euler:
            d_next = (x_next - model(g.alpha[i + 1] * x_next, g.t[i + 1])) / g.s[i + 1]
            x_next = x + ds * 0.5 * (d + d_next)
        x = x_next
    return g.alpha[-1] * x
