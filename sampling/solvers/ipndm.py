"""Improved PNDM (Zhang & Chen 2023, DEIS; as in diff-sampler), orders 1-4.

In EDM coordinates x_e = x/alpha, s = sigma/alpha the probability-flow ODE is dx_e/ds = eps,
and iPNDM is Adams-Bashforth on it with uniform-step weights:
x_e' = x_e + (s' - s) * sum_j b_j eps_{k-j}. Unlike PLMS it warms up with lower orders instead
of extra evaluations, so NFE = steps (the price is a lower asymptotic order: the first Euler
step's O(h^2) local error caps the global order at 2 for order >= 2).
"""
from __future__ import annotations

import torch

from common.registry import check_choice
from ..registry import register_solver
from .adams import History, ab_weights, add_combination_
from .grid import grid_coeffs, per_run, scaled


def _describe(steps, order=4, **_):
    return {"step_orders": [min(int(order), k + 1) for k in range(steps)]}


@per_run
def _plan(noise, ts, order):
    """Per step (t, alpha, (s' - s) * b_j / s_{k-j}): the history holds x_e - D = s eps, so 1/s is in the weights."""
    g = grid_coeffs(noise, ts)
    return g, [(g.t[i], g.alpha[i], tuple(w / g.s[i - j] for j, w in
                                          enumerate(ab_weights(min(order, i + 1), g.s[i + 1] - g.s[i]))))
               for i in range(len(ts) - 1)]


@register_solver("ipndm", describe=_describe)
def sample_ipndm(model, x, ts, noise, rng=None, order: int = 4):
    order = check_choice("ipndm order", int(order), (1, 2, 3, 4))
    g, steps = _plan(noise, ts, order)
    x = x / g.alpha[0]
    inp = torch.empty_like(x)
    history = History(order)  # s eps = x_e - D, newest first
    for t, a, weights in steps:
        x0 = model(scaled(x, a, inp), t)
        history.push(torch.sub(x, x0, out=history.buffer(x)))
        add_combination_(x, weights, history.items)
    return x.mul_(g.alpha[-1])
