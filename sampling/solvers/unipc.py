"""UniPC (Zhao et al. 2023), data prediction, orders 1-3, B(h) variants bh1 (B = h) and bh2 (B = e^h - 1).

Predictor UniP-p: x~_{k+1} = sigma_{k+1}/sigma_k x_k + alpha_{k+1} (1 - e^{-h}) m_k - alpha_{k+1} B(h) sum_i a_i D_i
with D_i = (m_{k-i} - m_k)/r_i and a solving R a = b on the past nodes (a = 1/2 for p = 2, as the reference).
Corrector UniC: after evaluating m_{k+1} at x~_{k+1}, the same update from x_k also uses
D_{k+1} = m_{k+1} - m_k, raising the order by one at no cost: the evaluation is reused by the next
predictor (taken at the uncorrected x~, as the reference). No corrector after the last step, so NFE = steps.
"""
from __future__ import annotations

import math

from collections import deque

import numpy as np

from common.registry import check_choice
from ..registry import register_solver
from .expint import phi
from .grid import grid_coeffs, per_run
from .multistep import combine
from .orders import describe_multistep, multistep_orders

B_FUNCTIONS = {"bh1": lambda hh: hh, "bh2": math.expm1}


def _b_vector(hh, order, variant):
    """b_i = hh * i! * phi_{i+1}(hh) / B(hh), i = 1..order (hh = -h for data prediction)."""
    return np.array([hh * math.factorial(i) * phi(i + 1, hh) / B_FUNCTIONS[variant](hh) for i in range(1, order + 1)])


def _coeffs(g, k, order, variant, corrector):
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
            [_coeffs(g, k, o, variant, False)[1:] for k, o in orders],
            [_coeffs(g, k, o, variant, True) for k, o in orders])


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


def _describe(steps, order=3, variant="bh1", lower_order_final="always", corrector=True, **_):
    corrector_steps = max(steps - 1, 0) if corrector else 0
    return {**describe_multistep(steps, order, lower_order_final), "corrector_steps": corrector_steps}


@register_solver("unipc", describe=_describe)
def sample_unipc(model, x, ts, noise, rng=None, order: int = 3, variant="bh1", lower_order_final="always",
                 corrector: bool = True):
    t, steps = fused_plan(noise, ts, int(order), check_choice("unipc variant", variant, B_FUNCTIONS),
                          lower_order_final, bool(corrector))
    history = deque(maxlen=4)  # predictions, newest first
    for k, (keep, w) in enumerate(steps):
        history.appendleft(model(x, t[k]))
        # x~_{k+1} = keep_k x~_k + sum_j w_j m_{k-j}: UniC of step k-1 and UniP of step k in one combination
        x = combine(keep, x, w, history)
    return x
