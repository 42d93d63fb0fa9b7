"""DPM-Solver++ (Lu et al. 2022b), data prediction: multistep 2M/3M and singlestep 2S (3S).

Multistep (Alg. 2; 3M as the DPM-Solver reference code): with h = lambda_{k+1} - lambda_k,
E_j = h phi_j(-h) and D0, D1, D2 the divided differences of past data predictions
(multistep.on_predictions), one step is

    2M:  x_{k+1} = sigma_{k+1}/sigma_k x_k + alpha_{k+1} E_1 (D0 + 1/2 D1)
    3M:  x_{k+1} = sigma_{k+1}/sigma_k x_k + alpha_{k+1} (E_1 D0 + E_2 D1 + E_3 D2)

3M reproduces the reference code and diffusers: E_3 on D2 where exact quadratic integration needs
2 E_3, so its local error is O(h^3) and it converges with order 2 (test_solvers_exp measures both).
``variant: exact`` puts 2 E_3 there: local error O(h^4), global order 3 (tests/test_solvers_orders.py,
on a Karras grid). The weights on past predictions are host floats computed once per run, so the
loop (multistep.run) is one linear combination per step; NFE = steps.

Singlestep (``method: singlestep``): DPM-Solver++(2S) blocks with the DPM-Solver-fast order
split of the budget and the ``outer_grid`` rule (see singlestep.py); the configured grid has
one point per evaluation, so NFE = steps there too.
"""
from __future__ import annotations

from common.registry import check_choice
from ..registry import register_solver
from . import multistep, singlestep
from .expint import phi
from .orders import describe_multistep

METHODS = ("multistep", "singlestep")
VARIANTS = {"reference": 1.0, "exact": 2.0}  # weight of E_3 D2 in 3M steps


def step_weights(g, k: int, order: int, d2_weight: float = 1.0):
    """(keep, weights on m_k, m_{k-1}, m_{k-2}) of the DPM-Solver++ step k -> k+1 (see the module docstring)."""
    h = g.lam[k + 1] - g.lam[k]
    E1, E2, E3 = (g.alpha[k + 1] * (h * phi(j, -h)) for j in (1, 2, 3))
    if order == 2:
        E2 = E1 / 2  # the paper's midpoint form
    return g.sigma[k + 1] / g.sigma[k], multistep.on_predictions(g, k, order, E1, E2, d2_weight * E3)


def _describe(steps, method="multistep", order=2, lower_order_final="below_10", outer_grid="logsnr",
              variant="reference", **_):
    check_choice("dpmpp variant", variant, VARIANTS)
    if check_choice("method", method, METHODS) == "singlestep":
        return {"method": method, **singlestep.describe(steps, order, outer_grid)}
    return {"method": method, **describe_multistep(steps, order, lower_order_final)}


@register_solver("dpmpp", describe=_describe)
def sample_dpmpp(model, x, ts, noise, rng=None, method="multistep", order: int = 2, lower_order_final="below_10",
                 outer_grid="logsnr", variant="reference"):
    d2_weight = VARIANTS[check_choice("dpmpp variant", variant, VARIANTS)]
    if check_choice("method", method, METHODS) == "singlestep":
        return singlestep.sample("data", model, x, ts, noise, order, outer_grid)
    g, steps = multistep.plan(noise, ts, step_weights, int(order), lower_order_final, d2_weight)
    return multistep.run("data", model, x, g, steps)
