"""DPM-Solver++ multistep (Lu et al. 2022b), data prediction, orders 1-3 (2M, 3M).

With h = lambda_{k+1} - lambda_k and phi_1 = expm1(-h), one step is

    x_{k+1} = sigma_{k+1}/sigma_k * x_k - alpha_{k+1} * phi_1 * D_k

where D_k extrapolates the past data predictions (order 2: D = (1 + 1/2r) m_k - 1/2r m_{k-1},
r = h_{k-1}/h_k; order 3 adds the second divided difference with phi_2, phi_3). The weights
on past predictions are precomputed, so the loop is one linear combination per step.
"""
from __future__ import annotations

import math

import numpy as np

from ..registry import register_solver
from .grid import grid_coeffs
from .orders import lower_order_final_applies, multistep_orders


def _weights(g, k: int, order: int) -> list[float]:
    """Weights on (m_k, m_{k-1}, m_{k-2}) for the step k -> k+1."""
    a, h = g.alpha[k + 1], g.lam[k + 1] - g.lam[k]
    phi1 = math.expm1(-h)
    e0 = np.array([1.0, 0.0, 0.0])
    if order == 1:
        return list(-a * phi1 * e0)
    r0 = (g.lam[k] - g.lam[k - 1]) / h
    d1_0 = np.array([1.0, -1.0, 0.0]) / r0
    if order == 2:
        return list(-a * phi1 * (e0 + 0.5 * d1_0))
    r1 = (g.lam[k - 1] - g.lam[k - 2]) / h
    d1_1 = np.array([0.0, 1.0, -1.0]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    return list(-a * phi1 * e0 + a * phi2 * d1 - a * phi3 * d2)


def _describe(steps, order=2, lower_order_final="below_10", **_):
    return {"step_orders": multistep_orders(steps, order, lower_order_final),
            "lower_order_final_applied": lower_order_final_applies(lower_order_final, steps)}


@register_solver("dpmpp", describe=_describe)
def sample_dpmpp(model, x, ts, noise, rng=None, order: int = 2, lower_order_final="below_10"):
    g = grid_coeffs(noise, ts)
    steps = len(ts) - 1
    orders = multistep_orders(steps, int(order), lower_order_final)
    weights = [_weights(g, k, orders[k]) for k in range(steps)]
    keep = [g.sigma[k + 1] / g.sigma[k] for k in range(steps)]
    history = []  # data predictions, newest first
    for k in range(steps):
        history = [model(x, g.t[k])] + history[:2]
        x = keep[k] * x + sum(w * m for w, m in zip(weights[k], history) if w != 0.0)
    return x
