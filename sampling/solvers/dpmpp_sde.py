"""SDE-DPM-Solver++(2M) (Lu et al. 2022b, Appendix; diffusers' "sde-dpmsolver++", midpoint form).

The data-prediction exponential integrator of the reverse SDE: with h = lambda_{k+1} - lambda_k,

    x_{k+1} = sigma_{k+1}/sigma_k e^{-h} x_k + alpha_{k+1} (1 - e^{-2h}) (D_0 + 1/2 D_1)
              + sigma_{k+1} sqrt(1 - e^{-2h}) xi_k,

D_1 = (m_k - m_{k-1}) / r_k the first difference (order 1 drops it). Noise is drawn per sample
(rng.like) at every step including the last. NFE = steps.
"""
from __future__ import annotations

import math

import numpy as np

from common.errors import NfebenchError
from ..registry import register_solver
from .grid import grid_coeffs
from .orders import lower_order_final_applies, multistep_orders


def _coeffs(g, k, order):
    """(keep, weights on (m_k, m_{k-1}), noise std) for the step k -> k+1."""
    h = g.lam[k + 1] - g.lam[k]
    a = g.alpha[k + 1] * -math.expm1(-2 * h)
    w = np.array([1.0, 0.0])
    if order == 2:
        r = (g.lam[k] - g.lam[k - 1]) / h
        w = w + 0.5 * np.array([1.0, -1.0]) / r
    return g.sigma[k + 1] / g.sigma[k] * math.exp(-h), list(a * w), g.sigma[k + 1] * math.sqrt(-math.expm1(-2 * h))


def _describe(steps, order=2, lower_order_final="below_10", **_):
    return {"step_orders": multistep_orders(steps, int(order), lower_order_final),
            "lower_order_final_applied": lower_order_final_applies(lower_order_final, steps)}


@register_solver("dpmpp_sde", describe=_describe, stochastic=True)
def sample_dpmpp_sde(model, x, ts, noise, rng=None, order: int = 2, lower_order_final="below_10"):
    if int(order) not in (1, 2):
        raise NfebenchError(f"dpmpp_sde order must be 1 or 2; got {order}")
    g = grid_coeffs(noise, ts)
    orders = multistep_orders(len(ts) - 1, int(order), lower_order_final)
    coeffs = [_coeffs(g, k, o) for k, o in enumerate(orders)]
    history = []
    for k, (keep, w, c) in enumerate(coeffs):
        history = [model(x, g.t[k])] + history[:1]
        x = keep * x + sum(wk * m for wk, m in zip(w, history) if wk != 0.0) + c * rng.like(x)
    return x
