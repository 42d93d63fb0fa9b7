"""UniPC's coefficients (Zhao et al. 2023), shared by the solvers built on its update (unipc, dc_solver).

Data prediction, orders 1-3, B(h) variants bh1 (B = h) and bh2 (B = e^h - 1); see unipc.py for the update.
"""
from __future__ import annotations

import math

import numpy as np

from .expint import phi
from .grid import grid_coeffs, per_run
from .orders import multistep_orders

B_FUNCTIONS = {"bh1": lambda hh: hh, "bh2": math.expm1}


def _b_vector(hh, order, variant):
    """b_i = hh * i! * phi_{i+1}(hh) / B(hh), i = 1..order (hh = -h for data prediction)."""
    return np.array([hh * math.factorial(i) * phi(i + 1, hh) / B_FUNCTIONS[variant](hh) for i in range(1, order + 1)])


def coeffs(g, k, order, variant, corrector):
    """Weights on (m_{k+1}, m_k, m_{k-1}, m_{k-2}) for step k -> k+1 (m_{k+1} only in the corrector)."""
    h = g.lam[k + 1] - g.lam[k]
    hh = -h
    base = -g.alpha[k + 1] * math.expm1(hh)
    bh = g.alpha[k + 1] * B_FUNCTIONS[variant](hh)
    r = [(g.lam[k - i] - g.lam[k]) / h for i in range(1, order)] + [1.0]
    b = _b_vector(hh, order, variant)
    R = np.vander(np.array(r), order, increasing=True).T  # row i: r^i
    if corrector:
        rho = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
        nodes = list(range(1, order)) + [-1]  # D_i on m_{k-i}, then D_{k+1}
    else:
        rho = np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
        nodes = list(range(1, order))
    w = np.zeros(4)
    w[1] = base
    for rho_i, i, ri in zip(rho, nodes, r):
        # D_i = (m_{k-i} - m_k) / r_i enters as - alpha B(h) rho_i D_i
        w[1 + i] -= bh * rho_i / ri
        w[1] += bh * rho_i / ri
    return tuple(float(v) for v in w)


@per_run
def plan(noise, ts, order: int, variant: str, lower_order_final):
    """Model times, keep_k = sigma_{k+1}/sigma_k, and the predictor and corrector weights of each step k -> k+1."""
    g = grid_coeffs(noise, ts)
    orders = list(enumerate(multistep_orders(len(ts) - 1, order, lower_order_final)))
    return (g.t, [g.sigma[k + 1] / g.sigma[k] for k, _ in orders],
            [coeffs(g, k, o, variant, False)[1:] for k, o in orders],
            [coeffs(g, k, o, variant, True) for k, o in orders])


@per_run
def fused_plan(noise, ts, order: int, variant: str, lower_order_final, corrector: bool):
    """The predictor of step k applied to the uncorrected x~_k, with step k-1's correction folded in.

    x_k = x~_k + (C_{k-1} - P_{k-1}) . m (the corrector minus the predictor of step k-1, both from x_{k-1}),
    so x~_{k+1} = keep_k x~_k + (keep_k (C_{k-1} - P_{k-1}) + P_k) . (m_k, ..., m_{k-3}): one linear
    combination per step, and the corrected x_k is never materialised."""
    t, keep, pred, corr = plan(noise, ts, order, variant, lower_order_final)
    steps = []
    for k in range(len(keep)):
        w = [*pred[k], 0.0]
        if k > 0 and corrector:
            delta = [corr[k - 1][0]] + [c - p for c, p in zip(corr[k - 1][1:], pred[k - 1])]
            w = [keep[k] * d + p for d, p in zip(delta, w)]
        steps.append((keep[k], tuple(w)))
    return t, steps
