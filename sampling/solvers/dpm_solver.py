"""DPM-Solver (Lu et al. 2022a): the noise-prediction exponential integrator, orders 1-3.

``method: singlestep`` is the paper's DPM-Solver-1/2/3 (Alg. 1-2) with its DPM-Solver-fast split
of the NFE budget into orders and the log-SNR outer-grid rule (``outer_grid``, singlestep.py);
``method: multistep`` is the eps-form multistep solver of Lu et al. 2022b (diffusers'
``algorithm_type="dpmsolver"``): with h = lambda_{k+1} - lambda_k, E_j = h phi_j(h) and D0, D1, D2
the divided differences of past noise predictions (multistep.on_predictions),

    2M:  x_{k+1} = alpha_{k+1}/alpha_k x_k - sigma_{k+1} E_1 (D0 + 1/2 D1)
    3M:  x_{k+1} = alpha_{k+1}/alpha_k x_k - sigma_{k+1} (E_1 D0 + E_2 D1 + E_3 D2)

NFE = steps for both (the singlestep grid has one point per evaluation).
"""
from __future__ import annotations

from common.registry import check_choice
from ..registry import register_solver
from . import multistep, singlestep
from .expint import phi
from .orders import describe_multistep

METHODS = ("multistep", "singlestep")


def step_weights(g, k: int, order: int):
    """(keep, weights on eps_k, eps_{k-1}, eps_{k-2}) of the multistep DPM-Solver step k -> k+1."""
    h = g.lam[k + 1] - g.lam[k]
    E1, E2, E3 = (-g.sigma[k + 1] * (h * phi(j, h)) for j in (1, 2, 3))
    return g.alpha[k + 1] / g.alpha[k], multistep.on_predictions(g, k, order, E1, E1 / 2 if order == 2 else E2, E3)


def _describe(steps, method="singlestep", order=3, lower_order_final="below_10", outer_grid="logsnr", **_):
    if check_choice("method", method, METHODS) == "singlestep":
        return {"method": method, **singlestep.describe(steps, order, outer_grid)}
    return {"method": method, **describe_multistep(steps, order, lower_order_final)}


@register_solver("dpm_solver", describe=_describe)
def sample_dpm_solver(model, x, ts, noise, rng=None, method="singlestep", order: int = 3,
                      lower_order_final="below_10", outer_grid="logsnr"):
    if check_choice("method", method, METHODS) == "singlestep":
        return singlestep.sample("eps", model, x, ts, noise, order, outer_grid)
    g, steps = multistep.plan(noise, ts, step_weights, int(order), lower_order_final)
    return multistep.run("eps", model, x, g, steps)
