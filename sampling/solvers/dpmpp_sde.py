"""SDE-DPM-Solver++(2M) (Lu et al. 2022b, Appendix; diffusers' "sde-dpmsolver++", midpoint form).

The data-prediction exponential integrator of the reverse SDE: with h = lambda_{k+1} - lambda_k,

    x_{k+1} = sigma_{k+1}/sigma_k e^{-h} x_k + alpha_{k+1} (1 - e^{-2h}) (D_0 + 1/2 D_1)
              + sigma_{k+1} sqrt(1 - e^{-2h}) xi_k,

D_1 = (m_k - m_{k-1}) / r_k the first difference (order 1 drops it). Noise is drawn per sample
(rng.like) at every step including the last. NFE = steps.
"""
from __future__ import annotations

import math
from collections import deque

from common.registry import check_choice
from ..registry import register_solver
from .multistep import combine, on_predictions, plan
from .orders import describe_multistep


def step_weights(g, k: int, order: int):
    """(keep, weights on m_k, m_{k-1}, noise std) of the step k -> k+1: alpha_{k+1} (1 - e^{-2h}) multiplies
    D0 + 1/2 D1, the same divided differences as the ODE's 2M (multistep.on_predictions)."""
    h = g.lam[k + 1] - g.lam[k]
    c = g.alpha[k + 1] * -math.expm1(-2 * h)
    keep = g.sigma[k + 1] / g.sigma[k] * math.exp(-h)
    return keep, on_predictions(g, k, order, c, c / 2), g.sigma[k + 1] * math.sqrt(-math.expm1(-2 * h))


def _describe(steps, order=2, lower_order_final="below_10", **_):
    return describe_multistep(steps, order, lower_order_final)


@register_solver("dpmpp_sde", describe=_describe, stochastic=True)
def sample_dpmpp_sde(model, x, ts, noise, rng=None, order: int = 2, lower_order_final="below_10"):
    g, steps = plan(noise, ts, step_weights, check_choice("dpmpp_sde order", int(order), (1, 2)), lower_order_final)
    history = deque(maxlen=2)  # data predictions, newest first
    for k, (keep, w, std) in enumerate(steps):
        history.appendleft(model(x, g.t[k]))
        x = combine(keep, x, w, history).add_(rng.like(x), alpha=std)  # + sigma_{k+1} sqrt(1 - e^{-2h}) xi_k
    return x
