"""USF (Liu et al. 2023, "A Unified Sampling Framework for Solver Searching of Diffusion Probabilistic Models";
thu-nics/USF, uni_sampler.py): a per-step plan. Every step k -> k+1 of the grid has its own update rule,
order and corrector, so searched schedules (time steps + per-step decisions) replay as data.

Each step is  x_{k+1} = keep_k x_k + sum_j w_kj m_{k-j}  in a prediction form (data: m = x0, eps: m = noise),
with host weights built once per run. A step's ``family`` names where the weights come from:

    dpmpp       DPM-Solver++ multistep, data prediction (dpmpp.step_weights: 2M midpoint, 3M as the reference)
    dpm_solver  DPM-Solver multistep, noise prediction (dpm_solver.step_weights)
    unipc       UniPC's UniP predictor; its corrector is UniC (unic.coeffs, ``variant`` bh1 | bh2)
    taylor      USF's own update in ``prediction`` data | noise: the Taylor expansion in lambda,
                    x_t = keep x_s + scale * sum_{i<p} h^i E_{i+1} m^(i)(lambda_s),   E_j = h phi_j(z)
                with m^(i) from finite differences over the ``estimate[i-1]`` nearest past points (USF's
                "Difference_n" with its default active points; default p-1 each) and m^(1) scaled by
                (1 + relaxation * h) (USF's "linear" relaxation)

A corrector on step k (USF's "pseudo" corrector, UniC for unipc) evaluates m_{k+1} at the predicted x_{k+1}
and redoes step k from x_k with m_{k+1} as one more point (order ``corrector_order``, default p + 1, points
``corrector_estimate``: taylor steps only; unipc: UniC's own); the evaluation is the one step k+1
starts with, so it is free, except after the last step, where it costs one more NFE (USF counts it too).
``afs`` is USF's analytical first step, m_0 without a model call: ``zero_x0`` takes x0 = 0 (USF's EDM code:
eps = x_T / sigma_T), ``unit_noise`` takes eps = x_T / sqrt(alpha_T^2 + sigma_T^2) (USF's VP code: eps = x_T).
NFE = steps - [afs] + [corrector on the last step], counted from the plan itself.
Not replayed from USF's decision space: DPM-Solver-v3 prediction (needs EMS statistics), start points other
than the previous grid point (singlestep), active points other than the nearest, relaxations other than
"linear", the "average_x0" first step (a dataset-mean file) and the U-Net skip coefficients.
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
from . import dpm_solver, dpmpp, unic  # usf composes these solvers' own step rules
from .expint import step as exp_step
from .grid import grid_coeffs, per_run
from .multistep import combine
from .orders import multistep_orders

FAMILIES = ("taylor", "dpmpp", "dpm_solver", "unipc")
PREDICTIONS = {"data": "data", "noise": "eps"}   # USF's prediction_types -> expint's forms
FAMILY_FORM = {"dpmpp": "data", "dpm_solver": "eps", "unipc": "data"}
AFS = ("none", "zero_x0", "unit_noise")
ENTRY_KEYS = ("family", "order", "corrector", "prediction", "relaxation", "estimate", "corrector_order",
              "corrector_estimate")
TAYLOR_ONLY = ("prediction", "relaxation", "estimate", "corrector_order", "corrector_estimate")
MAX_ESTIMATE = 3  # points behind one derivative (USF publishes up to Difference_3); the history keeps 4


@dataclass(frozen=True)
class StepPlan:
    family: str
    order: int
    corrector: bool
    prediction: str = "data"
    relaxation: float = 0.0
    estimate: tuple | None = None            # per derivative: how many points estimate it (None: order - 1 each)
    corrector_order: int | None = None       # None: order + 1
    corrector_estimate: tuple | None = None  # as estimate, for the corrector (None: corrector_order - 1 each)

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
    explicit = [key for key in TAYLOR_ONLY if key in entry and key != "relaxation"]
    if explicit and family != "taylor":
        raise NfebenchError(f"usf plan step {k}: {explicit[0]} is a taylor step's choice, not {family}'s")
    if not isinstance(e["corrector"], bool):
        raise NfebenchError(f"usf plan step {k}: corrector must be true or false; got {e['corrector']!r}")
    relaxation = float(e["relaxation"])
    if relaxation != 0.0 and (family != "taylor" or order < 2):
        raise NfebenchError(f"usf plan step {k}: relaxation scales the first derivative of a taylor step of order >= 2")
    estimate = _estimate(k, "estimate", entry.get("estimate"), order, k)
    q = entry.get("corrector_order")
    if q is not None and (not e["corrector"] or isinstance(q, bool) or not isinstance(q, int) or not 2 <= q <= k + 2):
        raise NfebenchError(f"usf plan step {k}: corrector_order needs corrector: true and an integer in 2..{k + 2} "
                            f"(the corrector has {k + 2} evaluations); got {q!r}")
    c_estimate = _estimate(k, "corrector_estimate", entry.get("corrector_estimate"), q or order + 1, k + 1)
    return StepPlan(family, order, e["corrector"], e["prediction"], relaxation, estimate, q, c_estimate)


def _estimate(k: int, key: str, value, order: int, available: int):
    """One count per derivative 1..order-1, each between the derivative's order and the points available."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != order - 1 or not all(
            isinstance(n, int) and not isinstance(n, bool) and i <= n <= min(available, MAX_ESTIMATE)
            for i, n in enumerate(value, start=1)):
        raise NfebenchError(f"usf plan step {k}: {key} must list {order - 1} point counts, the i-th in "
                            f"i..{min(available, MAX_ESTIMATE)}; got {value!r}")
    return tuple(value)


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


def taylor_weights(g, form: str, s: int, t: int, candidates, order: int, estimate=None, relaxation: float = 0.0):
    """(keep, weights on m_s, then on the predictions at grid indices ``candidates``) of USF's Taylor update
    s -> t of ``order`` in ``form``. Derivative i at s comes from the first estimate[i-1] candidates (USF's
    "Difference_n" over its default active points, nearest first; default order - 1 each) as
    sum_j a_j (m_j - m_s), with a solving  sum_j a_j dl_j^n / n! = [n == i], n = 1..estimate[i-1],
    dl_j = lambda_j - lambda_s."""
    st = exp_step(form, g, s, t)
    estimate = estimate or [order - 1] * (order - 1)
    candidates = candidates[:max(estimate, default=0)]
    w = np.zeros(1 + len(candidates))
    w[0] = st.scale * st.E(1)
    for i, e in enumerate(estimate, start=1):
        dl = np.array([g.lam[j] - g.lam[s] for j in candidates[:e]])
        a = np.linalg.solve(np.array([dl ** n / math.factorial(n) for n in range(1, e + 1)]), np.eye(e)[i - 1])
        c = st.scale * st.h ** i * st.E(i + 1) * ((1.0 + relaxation * st.h) if i == 1 else 1.0)
        w[1:1 + e] += c * a
        w[0] -= c * a.sum()
    return st.keep, tuple(float(v) for v in w)


def _predictor(g, k: int, sp: StepPlan, variant: str):
    """(keep, weights on m_k, m_{k-1}, ...) of step k -> k+1."""
    if sp.family == "dpmpp":
        return dpmpp.step_weights(g, k, sp.order)
    if sp.family == "dpm_solver":
        return dpm_solver.step_weights(g, k, sp.order)
    if sp.family == "unipc":
        return g.sigma[k + 1] / g.sigma[k], unic.coeffs(g, k, sp.order, variant, False)[1:]
    return taylor_weights(g, sp.form, k, k + 1, list(range(k - 1, -1, -1)), sp.order, sp.estimate, sp.relaxation)


def _corrector(g, k: int, sp: StepPlan, variant: str):
    """(keep, weights on m_{k+1}, m_k, m_{k-1}, ...) of step k -> k+1 redone with m_{k+1}, or None."""
    if not sp.corrector:
        return None
    if sp.family == "unipc":
        return g.sigma[k + 1] / g.sigma[k], unic.coeffs(g, k, sp.order, variant, True)
    # USF's pseudo corrector: from x_k again, the new point k+1 first, then k-1, k-2, ... (unrelaxed)
    q = sp.corrector_order or sp.order + 1
    keep, w = taylor_weights(g, sp.form, k, k + 1, [k + 1, *range(k - 1, -1, -1)], q, sp.corrector_estimate)
    return keep, (w[1], w[0], *w[2:])


@per_run
def step_weights(noise, ts, specs: tuple, variant: str):
    """Model times, per-grid-point (alpha, sigma), and each step's (form, predictor, corrector)."""
    g = grid_coeffs(noise, ts)
    return g, [(sp.form, _predictor(g, k, sp, variant), _corrector(g, k, sp, variant)) for k, sp in enumerate(specs)]


@per_run
def fused_steps(noise, ts, specs: tuple, variant: str):
    """Grid, then per step k the predictor applied to the uncorrected x~_k with step k-1's corrector folded in,
    as unic.fused_plan: (keep_k, [(form, weights on that form's predictions, newest first), ...]); a last-step
    corrector becomes one more update (keep 1) after the extra evaluation. A step's corrector and predictor
    share its keep (the same form and step), so x_k = x~_k + (C_{k-1} - P_{k-1}) . m and x_k is never formed."""
    g, steps = step_weights(noise, ts, specs, variant)
    fused, delta = [], None  # delta: (form, C_{k-1} - P_{k-1} on m_k, m_{k-1}, ...)
    for form, (keep, w), corr in steps:
        terms = [(form, tuple(w))]
        if delta is not None:
            terms.insert(0, (delta[0], tuple(keep * d for d in delta[1])))
        fused.append((keep, _merged(terms)))
        delta = None if corr is None else _correction(keep, w, corr, form)
    if delta is not None:
        fused.append((1.0, _merged([delta])))
    return g, fused


def _correction(keep, w, corr, form):
    c_keep, c = corr
    assert c_keep == keep, "a step's corrector and predictor keep the same share of x"
    n = max(len(c), len(w) + 1)
    c, p = [*c, *[0.0] * (n - len(c))], [0.0, *w, *[0.0] * (n - len(w) - 1)]
    return form, tuple(a - b for a, b in zip(c, p))


def _merged(terms):
    """Weights of the same form added up, so each prediction is read once."""
    out = {}
    for form, w in terms:
        have = out.get(form, ())
        n = max(len(have), len(w))
        out[form] = tuple((have[j] if j < len(have) else 0.0) + (w[j] if j < len(w) else 0.0) for j in range(n))
    return tuple(out.items())


def _cost(steps, afs="none", **opts):
    specs = step_plans(steps, **_plan_opts(opts))
    return steps - (check_choice("usf afs", afs, AFS) != "none") + specs[-1].corrector


def _steps(nfe, plan=None, afs="none", **_):
    # a plan fixes its steps; else the default plan (no corrector after the last step) spends one NFE a step
    return len(plan) if plan else nfe + (check_choice("usf afs", afs, AFS) != "none")


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


def _first_x0(afs: str, x, a: float, s: float):
    """The analytical first step's x0 prediction at t_start."""
    if afs == "zero_x0":
        return torch.zeros_like(x)
    return x.mul((1.0 - s / math.hypot(a, s)) / a)  # x0 = (x - s eps) / a with eps = x / |(a, s)|


@register_solver("usf", steps=_steps, cost=_cost, describe=_describe)
def sample_usf(model, x, ts, noise, rng=None, plan=None, family="taylor", order: int = 2, prediction="data",
               corrector: bool = True, relaxation: float = 0.0, variant="bh1", lower_order_final="always",
               afs="none"):
    specs = step_plans(len(ts) - 1, plan, family, order, prediction, corrector, relaxation, lower_order_final)
    g, fused = fused_steps(noise, ts, specs, check_choice("unipc variant", variant, unic.B_FUNCTIONS))
    hist = _History({form for _, terms in fused for form, _ in terms})
    analytic = check_choice("usf afs", afs, AFS) != "none"
    for k, (keep, terms) in enumerate(fused):  # one more than the steps after a last-step corrector
        m = _first_x0(afs, x, g.alpha[0], g.sigma[0]) if k == 0 and analytic else model(x, g.t[k])
        hist.push(m, x, g.alpha[k], g.sigma[k])
        (form, w), *others = terms
        x = combine(keep, x, w, hist.forms[form])  # a new buffer: the x the model saw stays as it was
        for form, w in others:
            combine(1.0, x, w, hist.forms[form], out=x)
    return x
