"""DPM-Solver++ (Lu et al. 2022b), data prediction: multistep 2M/3M and singlestep 2S (3S).

Multistep: with h = lambda_{k+1} - lambda_k, one step is

    x_{k+1} = sigma_{k+1}/sigma_k * x_k + alpha_{k+1} * (E_1 D_0 [+ E_2 D_1 + E_3 D_2])

where D are divided differences of past data predictions (order 2 is the paper's midpoint
form with 1/2 E_1 on the first difference). 3M reproduces the DPM-Solver reference code and
diffusers: E_3 on D_2 where exact quadratic integration needs 2 E_3, so its local error is O(h^3)
and it converges with order 2 (test_solvers_exp measures both). ``variant: exact`` puts 2 E_3 there:
local error O(h^4), global order 3 (tests/test_solvers_orders.py, on a Karras grid). The weights on past predictions
are precomputed, so the loop is one linear combination per step; NFE = steps.

Singlestep (``method: singlestep``): DPM-Solver++(2S) blocks with the DPM-Solver-fast order
split of the budget and the ``outer_grid`` rule (see singlestep.py); the configured grid has
one point per evaluation, so NFE = steps there too.
"""
from __future__ import annotations


from common.errors import NfebenchError
from ..registry import register_solver
from . import singlestep
from .expint import multistep_weights, past_ratios, predict, step
from .grid import grid_coeffs
from .orders import lower_order_final_applies, multistep_orders

METHODS = ("multistep", "singlestep")


def check_method(method):
    if method not in METHODS:
        raise NfebenchError(f"method must be one of {', '.join(METHODS)}; got '{method}'")
    return method


def run_multistep(form, model, x, g, weights):
    """weights[k]: host floats on (m_k, m_{k-1}, m_{k-2}) for the step k -> k+1, in the given form."""
    keep = [step(form, g, k, k + 1).keep for k in range(len(g.t) - 1)]
    history = []  # predictions, newest first
    for k, w in enumerate(weights):
        history = [predict(form, model, x, g.t[k], g.alpha[k], g.sigma[k])] + history[:2]
        x = keep[k] * x + sum(wk * m for wk, m in zip(w, history) if wk != 0.0)
    return x


VARIANTS = {"reference": 1.0, "exact": 2.0}  # weight of E_3 D_2 in 3M steps


def check_variant(variant):
    if variant not in VARIANTS:
        raise NfebenchError(f"dpmpp variant must be one of {', '.join(VARIANTS)}; got '{variant}'")
    return VARIANTS[variant]


def dpm_multistep_weights(form, g, orders, d2_weight=1.0):
    return [multistep_weights(step(form, g, k, k + 1), o, past_ratios(g, k, o), d2_weight) for k, o in enumerate(orders)]


def run_singlestep(form, model, x, g, noise, order, outer_grid):
    _, blocks = singlestep.plan_blocks(form, g, noise, int(order), outer_grid)
    pred = lambda m, y, p: predict(form, m, y, p.t, p.alpha, p.sigma)  # noqa: E731
    return singlestep.run_blocks(model, x, blocks, pred)


def describe_exp(steps, method="multistep", order=2, lower_order_final="below_10", outer_grid="logsnr",
                 variant="reference", **_):
    check_variant(variant)
    if check_method(method) == "singlestep":
        return {"method": method, **singlestep.describe(steps, order, outer_grid)}
    return {"method": method, "step_orders": multistep_orders(steps, int(order), lower_order_final),
            "lower_order_final_applied": lower_order_final_applies(lower_order_final, steps)}


def sample_exp(form, model, x, ts, noise, method, order, lower_order_final, outer_grid, variant="reference"):
    g = grid_coeffs(noise, ts)
    d2_weight = check_variant(variant)
    if check_method(method) == "singlestep":
        return run_singlestep(form, model, x, g, noise, order, outer_grid)
    orders = multistep_orders(len(ts) - 1, int(order), lower_order_final)
    return run_multistep(form, model, x, g, dpm_multistep_weights(form, g, orders, d2_weight))


@register_solver("dpmpp", describe=describe_exp)
def sample_dpmpp(model, x, ts, noise, rng=None, method="multistep", order: int = 2, lower_order_final="below_10",
                 outer_grid="logsnr", variant="reference"):
    return sample_exp("data", model, x, ts, noise, method, order, lower_order_final, outer_grid, variant)
