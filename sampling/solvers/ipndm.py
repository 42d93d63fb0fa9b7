"""Improved PNDM (Zhang & Chen 2023, DEIS; as in diff-sampler), orders 1-4.

In EDM coordinates x_e = x/alpha, s = sigma/alpha the probability-flow ODE is dx_e/ds = eps,
and iPNDM is Adams-Bashforth on it with uniform-step weights:
x_e' = x_e + (s' - s) * sum_j b_j eps_{k-j}. Unlike PLMS it warms up with lower orders instead
of extra evaluations, so NFE = steps (the price is a lower asymptotic order: the first Euler
step's O(h^2) local error caps the global order at 2 for order >= 2).
"""
from __future__ import annotations

from common.errors import NfebenchError
from ..registry import register_solver
from .grid import grid_coeffs
from .pndm import combine


def _describe(steps, order=4, **_):
    return {"step_orders": [min(int(order), k + 1) for k in range(steps)]}


@register_solver("ipndm", describe=_describe)
def sample_ipndm(model, x, ts, noise, rng=None, order: int = 4):
    order = int(order)
    if order not in (1, 2, 3, 4):
        raise NfebenchError(f"ipndm order must be 1, 2, 3 or 4; got {order}")
    g = grid_coeffs(noise, ts)
    x = x / g.alpha[0]
    history = []
    for i in range(len(ts) - 1):
        history = [(x - model(g.alpha[i] * x, g.t[i])) / g.s[i]] + history[: order - 1]
        x = x + (g.s[i + 1] - g.s[i]) * combine(history, len(history))
    return g.alpha[-1] * x
