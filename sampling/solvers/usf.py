"""USF (Liu et al. 2023, "A Unified Sampling Framework for Solver Searching of Diffusion Probabilistic Models";
thu-nics/USF, uni_sampler.py): a per-step plan. Every step k -> k+1 of the grid has its own update rule,
order and corrector, so searched schedules (time steps + per-step decisions) replay as data.

Each step is  x_{k+1} = keep_k x_k + sum_j w_kj m_{k-j}  in a prediction form (data: m = x0, eps: m = noise),
with host weights built once per run. A step's ``family`` names where the weights come from:

    dpmpp       DPM-Solver++ multistep, data prediction (dpmpp.step_weights: 2M midpoint, 3M as the reference)
    dpm_solver  DPM-Solver multistep, noise prediction (dpm_solver.step_weights)
    unipc       UniPC's UniP predictor; its corrector is UniC (unipc._coeffs, ``variant`` bh1 | bh2)
    taylor      USF's own update in ``prediction`` data | noise: the Taylor expansion in lambda,
                    x_t = keep x_s + scale * sum_{i<p} h^i E_{i+1} m^(i)(lambda_s),   E_j = h phi_j(z)
                with m^(i) from finite differences over the p-1 nearest past points (USF's "Difference_{p-1}"
                with its default active points) and m^(1) scaled by (1 + relaxation * h) (USF's "linear" relaxation)

A corrector on step k (USF's "pseudo" corrector, UniC for unipc) evaluates m_{k+1} at the predicted x_{k+1}
and redoes step k from x_k with m_{k+1} as one more point, order p + 1; the evaluation is the one step k+1
starts with, so it is free, except after the last step, where it costs one more NFE (USF counts it too).
``afs: zero_x0`` is USF's analytical first step: m_0 is the x0 prediction 0 instead of a model call
(USF's code sets eps(x_T) = x_T, i.e. x0 = (1 - sigma_T)/alpha_T x_T; both mean "x_T is pure noise").
NFE = steps - [afs] + [corrector on the last step], counted from the plan itself.
Not replayed from USF's decision space: DPM-Solver-v3 prediction (needs EMS statistics), start points other
than the previous grid point (singlestep), custom active points, and the U-Net skip coefficients.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from common.errors import NfebenchError
from common.registry import check_choice
from ..registry import register_solver
from . import dpm_solver, dpmpp, unipc
from .expint import step as exp_step
from .grid import grid_coeffs, per_run
from .multistep import combine
from .orders import multistep_orders

FAMILIES = ("taylor", "dpmpp", "dpm_solver", "unipc")
PREDICTIONS = {"data": "data", "noise": "eps"}   # USF's prediction_types -> expint's forms
FAMILY_FORM = {"dpmpp": "data", "dpm_solver": "eps", "unipc": "data"}
AFS = ("none", "zero_x0")
ENTRY_KEYS = ("family", "order", "corrector", "prediction", "relaxation")


@dataclass(frozen=True)
class StepPlan:
    family: str
    order: int
    corrector: bool
    prediction: str = "data"
    relaxation: float = 0.0

    @property
    def form(self) -> str:
        return FAMILY_FORM.get(self.family) or PREDICTIONS[self.prediction]

    def label(self) -> str:
        name = self.family if self.family != "taylor" else f"taylor-{self.prediction}"
        return f"{name}{self.order}" + ("+c" if self.corrector else "")


def _entry(k: int, steps: int, entry, default: dict) -> StepPlan:
    if not isinstance(entry, dict):
        raise NfebenchError(f"usf plan step {k}: expected a mapping with keys {', '.join(ENTRY_KEYS)}; got {entry!r}")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise NfebenchError(f"usf plan step {k}: unknown key {unknown[0]!r}; valid: {', '.join(ENTRY_KEYS)}")
    e = {**default, **entry}
    family = check_choice(f"usf family (plan step {k})", e["family"], FAMILIES)
    order = e["order"]
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= min(3, k + 1):
        raise NfebenchError(f"usf plan step {k}: order must be an integer in 1..{min(3, k + 1)} "
                            f"(step {k} has {k + 1} past evaluations); got {order!r}")
    check_choice(f"usf prediction (plan step {k})", e["prediction"], PREDICTIONS)
    if "prediction" in entry and family != "taylor":
        raise NfebenchError(f"usf plan step {k}: prediction is a taylor step's choice; {family} predicts "
                            f"{'noise' if FAMILY_FORM[family] == 'eps' else 'data'}")
    if not isinstance(e["corrector"], bool):
        raise NfebenchError(f"usf plan step {k}: corrector must be true or false; got {e['corrector']!r}")
    relaxation = float(e["relaxation"])
    if relaxation != 0.0 and (family != "taylor" or order < 2):
        raise NfebenchError(f"usf plan step {k}: relaxation scales the first derivative of a taylor step of order >= 2")
    return StepPlan(family, order, e["corrector"], e["prediction"], relaxation)


def step_plans(steps: int, plan=None, family="taylor", order=2, prediction="data", corrector=True,
               relaxation=0.0, lower_order_final="always") -> tuple[StepPlan, ...]:
    """The plan of every step: ``plan`` as given (one entry per step; missing keys take the solver-level
    values), or, when empty, the solver-level values with the multistep warm-up and no corrector after
    the last step (as UniPC)."""
    default = {"family": family, "order": order, "corrector": corrector, "prediction": prediction,
               "relaxation": relaxation}
    if plan is not None and not isinstance(plan, (list, tuple)):
        raise NfebenchError(f"usf plan must be a list of step mappings (or null); got {plan!r}")
    if plan:
        if len(plan) != steps:
            raise NfebenchError(f"usf plan has {len(plan)} steps but the grid has {steps}")
        return tuple(_entry(k, steps, e, default) for k, e in enumerate(plan))
    orders = multistep_orders(steps, int(order), lower_order_final)
    return tuple(_entry(k, steps, {"order": o, "corrector": bool(corrector) and k < steps - 1}, default)
                 for k, o in enumerate(orders))


def taylor_weights(g, form: str, s: int, t: int, points, relaxation: float = 0.0):
    """(keep, weights on the predictions at grid indices ``points``) of USF's Taylor update s -> t in ``form``.

    points[0] must be s; the order is len(points). Derivative i at s is sum_j a_ij (m_j - m_s) with a_i the
    solution of the Taylor system sum_j a_ij dl_j^n / n! = [n == i], n = 1..p-1, dl_j = lambda_j - lambda_s."""
    st = exp_step(form, g, s, t)
    w = np.zeros(len(points))
    w[0] = st.scale * st.E(1)
    p = len(points)
    if p > 1:
        dl = np.array([g.lam[j] - g.lam[s] for j in points[1:]])
        taylor = np.array([dl ** n / math.factorial(n) for n in range(1, p)])
        for i in range(1, p):
            a = np.linalg.solve(taylor, np.eye(p - 1)[i - 1])
            c = st.scale * st.h ** i * st.E(i + 1) * ((1.0 + relaxation * st.h) if i == 1 else 1.0)
            w[1:] += c * a
            w[0] -= c * a.sum()
    return st.keep, tuple(float(v) for v in w)


def _predictor(g, k: int, sp: StepPlan, variant: str):
    """(keep, weights on m_k, m_{k-1}, ...) of step k -> k+1."""
    if sp.family == "dpmpp":
        return dpmpp.step_weights(g, k, sp.order)
    if sp.family == "dpm_solver":
        return dpm_solver.step_weights(g, k, sp.order)
    if sp.family == "unipc":
        return g.sigma[k + 1] / g.sigma[k], unipc._coeffs(g, k, sp.order, variant, False)[1:]
    return taylor_weights(g, sp.form, k, k + 1, list(range(k, k - sp.order, -1)), sp.relaxation)


def _corrector(g, k: int, sp: StepPlan, variant: str):
    """(keep, weights on m_{k+1}, m_k, m_{k-1}, ...) of step k -> k+1 redone with m_{k+1}, or None."""
    if not sp.corrector:
        return None
    if sp.family == "unipc":
        return g.sigma[k + 1] / g.sigma[k], unipc._coeffs(g, k, sp.order, variant, True)
    # USF's pseudo corrector: start x_k, points k+1, k, k-1, ... (unrelaxed), order p + 1
    keep, w = taylor_weights(g, sp.form, k, k + 1, [k, k + 1, *range(k - 1, k - sp.order, -1)])
    return keep, (w[1], w[0], *w[2:])


@per_run
def step_weights(noise, ts, specs: tuple, variant: str):
    """Model times, per-grid-point (alpha, sigma), and each step's (form, predictor, corrector)."""
    g = grid_coeffs(noise, ts)
    return g, [(sp.form, _predictor(g, k, sp, variant), _corrector(g, k, sp, variant)) for k, sp in enumerate(specs)]


def _cost(steps, afs="none", **opts):
    specs = step_plans(steps, **_plan_opts(opts))
    return steps - (check_choice("usf afs", afs, AFS) == "zero_x0") + specs[-1].corrector


def _steps(nfe, plan=None, afs="none", **_):
    # a plan fixes its steps; else the default plan (no corrector after the last step) spends one NFE a step
    return len(plan) if plan else nfe + (check_choice("usf afs", afs, AFS) == "zero_x0")


def _plan_opts(opts: dict) -> dict:
    return {k: v for k, v in opts.items() if k in ("plan", "family", "order", "prediction", "corrector",
                                                   "relaxation", "lower_order_final")}


def _describe(steps, afs="none", **opts):
    specs = step_plans(steps, **_plan_opts(opts))
    return {"step_plan": [sp.label() for sp in specs], "step_orders": [sp.order for sp in specs],
            "corrector_steps": sum(sp.corrector for sp in specs), "afs": afs}


class _History:
    """Past predictions, newest first, in each form the plan uses (eps = (x - alpha x0) / sigma at the
    point where x0 was evaluated)."""

    def __init__(self, forms):
        self.forms = {f: deque(maxlen=4) for f in forms}

    def push(self, x0, x, a: float, s: float):
        for form, h in self.forms.items():
            h.appendleft(x0 if form == "data" else x0.mul(-a / s).add_(x, alpha=1.0 / s))


@register_solver("usf", steps=_steps, cost=_cost, describe=_describe)
def sample_usf(model, x, ts, noise, rng=None, plan=None, family="taylor", order: int = 2, prediction="data",
               corrector: bool = True, relaxation: float = 0.0, variant="bh1", lower_order_final="always",
               afs="none"):
    specs = step_plans(len(ts) - 1, plan, family, order, prediction, corrector, relaxation, lower_order_final)
    g, steps = step_weights(noise, ts, specs, check_choice("unipc variant", variant, unipc.B_FUNCTIONS))
    hist = _History({form for form, _, _ in steps})
    analytic = check_choice("usf afs", afs, AFS) == "zero_x0"
    x_prev = x  # x_k before its predictor ran: where a corrector restarts
    for k in range(len(steps) + (steps[-1][2] is not None)):  # + the evaluation a last-step corrector needs
        hist.push(torch.zeros_like(x) if k == 0 and analytic else model(x, g.t[k]), x, g.alpha[k], g.sigma[k])
        if k > 0 and steps[k - 1][2] is not None:  # the corrector of step k-1, with m_k
            form, _, (keep, w) = steps[k - 1]
            x = combine(keep, x_prev, w, hist.forms[form])
        if k == len(steps):
            break
        x_prev = x
        form, (keep, w), _ = steps[k]
        x = combine(keep, x, w, hist.forms[form])
    return x
