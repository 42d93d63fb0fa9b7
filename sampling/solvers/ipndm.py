"""Improved PNDM (Zhang & Chen 2023, DEIS; as in diff-sampler), orders 1-4.

In EDM coordinates x_e = x/alpha, s = sigma/alpha the probability-flow ODE is dx_e/ds = eps,
and iPNDM is Adams-Bashforth on it with uniform-step weights:
x_e' = x_e + (s' - s) * sum_j b_j eps_{k-j}. Unlike PLMS it warms up with lower orders instead
of extra evaluations, so NFE = steps (the price is a lower asymptotic order: the first Euler
step's O(h^2) local error caps the global order at 2 for order >= 2).
"""
from __future__ import annotations

from common.registry import check_choice
from ..registry import register_solver
from .adams import History, ab_weights
from .grid import grid_coeffs, per_run, sigma_eps
from .multistep import combine


def _describe(steps, order=4, **_):
    return {"step_orders": [min(int(order), k + 1) for k in range(steps)]}


@per_run
def _plan(noise, ts, order):
    """Per step (t, alpha, sigma, alpha'/alpha, alpha' (s' - s) b_j / sigma_{k-j}): x stays in the schedule's
    coordinates (alpha x_e) and the history holds x - alpha D = sigma eps, so the alphas and 1/sigma are in
    the weights."""
    g = grid_coeffs(noise, ts)
    return [(g.t[i], g.alpha[i], g.sigma[i], g.alpha[i + 1] / g.alpha[i],
             tuple(g.alpha[i + 1] * w / g.sigma[i - j]
                   for j, w in enumerate(ab_weights(min(order, i + 1), g.s[i + 1] - g.s[i]))))
            for i in range(len(ts) - 1)]


@register_solver("ipndm", describe=_describe)
def sample_ipndm(model, x, ts, noise, rng=None, order: int = 4):
    order = check_choice("ipndm order", int(order), (1, 2, 3, 4))
    history = History(order)  # sigma eps = x - alpha D, newest first
    start = x  # the caller's x is never written: the first step writes a new buffer, later ones update it
    for t, a, s, keep, weights in _plan(noise, ts, order):
        history.push(sigma_eps(model, x, t, a, s, out=history.buffer(x)))
        # x_e' = x_e + (s' - s) sum_j b_j eps_{k-j}
        x = combine(keep, x, weights, history.items, out=None if x is start else x)
    return x
