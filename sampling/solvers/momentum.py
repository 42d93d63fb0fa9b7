"""Heavy-ball (HB) and generalised heavy-ball (GHVB) momentum (Wizadwongsa et al. 2023, "Diffusion Sampling
with Momentum for Mitigating Divergence Artifacts").

Both step the PF-ODE in EDM coordinates, dx_e/ds = eps with x_e = x/alpha, s = sigma/alpha (the paper's g),
written here on x itself: x_{k+1} = alpha_{k+1}/alpha_k x_k + S_k d_k with S_k = alpha_{k+1} (s_{k+1} - s_k).

- hb (HB on PLMS):  v_k = (1 - beta) v_{k-1} + beta AB_m(eps_k, eps_{k-1}, ...),  d_k = v_k;
- hb_dpmpp (HB on DPM-Solver++(2M), data form): v = (1 - beta) v + beta (D0 + 1/2 D1) on the 2M steps,
  x_{k+1} = sigma_{k+1}/sigma_k x_k + E1_k v (E1_k = alpha_{k+1} (1 - e^{-h})); the first and lower-order
  final steps are plain DDIM and leave v alone, as in the reference scheduler;
- ghvb: v_k = (1 - beta) v_{k-1} + beta eps_k, and d_k the beta-dependent Adams-Bashforth combination of the
  v's divided by beta (the reference's AdamBmixer), which is AB_m at beta = 1.

``order`` as in the paper: 3.8 is AB4 (m = 4) with beta = 0.8; an integer m means beta = 1. Warm-up uses lower
orders (m_k = min(m, k + 1)), so NFE = steps; v starts at the first step's d. ``warmup: pseudo_heun`` (hb, ghvb)
instead takes PNDM's first PLMS step, the mean slope of a DDIM step's two ends (one extra call, NFE = steps + 1;
later steps still combine only the grid-point eps), so that order 4 / 2 at beta = 1 is pndm's plms / s_pndm.

HB runs on u_k = S_k v_k, the velocity in x units: u_k = (1 - beta) S_k/S_{k-1} u_{k-1} + beta S_k d_k, one
weighted sum over the model outputs and u_{k-1}, and x_{k+1} = keep_k x_k + u_k one more pass; where no later
step reads u_k (at beta = 1 never) the step is the single sum keep_k x_k + beta S_k d_k + ..., so at beta = 1
each step is the base solver's own sum.
"""
from __future__ import annotations

import math
from collections import deque

import torch

from common.errors import NfebenchError
from common.registry import check_choice
from ..registry import register_solver
from .expint import check_form, phi, predict
from .grid import grid_coeffs, per_run, sigma_eps
from .multistep import combine, history_entry, on_predictions
from .orders import describe_multistep, multistep_orders

# AdamBmixer's numerators: (coefficient, coefficient of b) on eps_k, eps_{k-1}, ... over the denominator
_MIXER = {1: (1, ((0, 1),)), 2: (2, ((2, 1), (-2, 1))), 3: (12, ((18, 5), (-24, 8), (6, -1))),
          4: (24, ((46, 9), (-78, 19), (42, -5), (-10, 1)))}


def split_order(order, max_order: int = 4) -> tuple[int, float]:
    """The paper's order: 3.8 -> (AB4, beta 0.8); 4 -> (AB4, beta 1)."""
    order = float(order)
    m = math.ceil(order)
    if not (order > 0 and m <= max_order):
        raise NfebenchError(f"momentum order must be in (0, {max_order}]; got {order:g}")
    beta = round(order - (m - 1), 12)  # 3.8 - 3 = 0.7999999999999998 otherwise
    return m, beta


def mixer_weights(m: int, b: float) -> tuple:
    """GHVB's Adams-Bashforth weights on (v_k, v_{k-1}, ...), divided by b; uniform-step AB_m at b = 1."""
    den, terms = _MIXER[m]
    return tuple((c + cb * b) / den / b for c, cb in terms)


def _eps_steps(g, m):
    """(keep, S) of every step and the warm-up orders: x_{k+1} = keep x_k + S d_k."""
    n = len(g.t) - 1
    return ([(g.alpha[k + 1] / g.alpha[k], g.alpha[k + 1] * (g.s[k + 1] - g.s[k])) for k in range(n)],
            [min(m, k + 1) for k in range(n)])


WARMUPS = ("ab", "pseudo_heun")


def _warmup(warmup):
    return None if check_choice("momentum warmup", warmup, WARMUPS) == "ab" else _pseudo_heun


def _pseudo_heun(model, x, g, e1, keep, s):
    """PNDM's first PLMS step: the mean of the slopes at both ends of the DDIM step (one extra call)."""
    e2 = predict("eps", model, combine(keep, x, (s,), (e1,)), g.t[1], g.alpha[1], g.sigma[1])
    return e1.add(e2).mul_(0.5)


def _cost(steps, warmup="ab", **_):
    return steps + int(check_choice("momentum warmup", warmup, WARMUPS) != "ab")


def _steps(nfe, warmup="ab", **_):
    return nfe - _cost(0, warmup)


def _describe(steps, order=3.8, warmup="ab", **_):
    m, beta = split_order(order)
    return {"ab_order": m, "beta": beta, "step_orders": [min(m, k + 1) for k in range(steps)], "warmup": warmup}


def _describe_dpmpp(steps, order=1.8, lower_order_final="below_10", **_):
    m, beta = split_order(order, max_order=2)
    return {"beta": beta, **describe_multistep(steps, m, lower_order_final)}


def _with_momentum(beta, keeps, scales, weights, on):
    """Per step (keep, weights on the predictions, weight on u_{k-1}); on[k]: HB acts at step k."""
    plan = []
    for k, (keep, s, w) in enumerate(zip(keeps, scales, weights)):
        b, c_u = (beta, (1 - beta) * s / scales[k - 1]) if on[k] else (1.0, 0.0)
        plan.append((keep, tuple(b * wj for wj in w), c_u))
    return plan


def _hb_steps(form, g, plan):
    """Per step (keep, weights on the predictions as given, the same on the history as kept, c_u, whether u_k
    is formed): the eps history holds sigma eps = x - alpha x0, so its weights carry 1/sigma; u_k is formed
    only where the next step's momentum reads it."""
    eps = check_form(form) == "eps"
    return [(keep, w, tuple(wj / g.sigma[k - j] for j, wj in enumerate(w)) if eps else w, c_u,
             k + 1 < len(plan) and plan[k + 1][2] != 0.0) for k, (keep, w, c_u) in enumerate(plan)]


def _run_hb(form, model, x, g, steps, first=None):
    """u_k = c_u u_{k-1} + sum_j w_j m_{k-j} (a pass per term), then x_{k+1} = keep x_k + u_k in one more pass
    (else the step is one combine). u and the eps history are this loop's own buffers, recycled; every x_{k+1}
    is a new buffer, so that what the model saw and returned stays as it was (as multistep.run)."""
    size = max(len(w) for _, w, _, _, _ in steps)
    history, u = deque(maxlen=size), None
    eps = form == "eps"
    for k, (keep, w, w_m, c_u, make_u) in enumerate(steps):
        history.appendleft(history_entry(eps, model, x, g, k, out=history[-1] if len(history) == size else None))
        preds = list(history)[: len(w)]
        if k == 0 and first is not None:  # w = (S_0,) on the first step; the slope is in eps itself
            preds, w_m = [first(model, x, g, history[0].mul(1.0 / g.sigma[0]) if eps else history[0], keep, w[0])], w
        if make_u:
            u = combine(c_u, u, w_m, preds, out=u) if c_u != 0.0 else combine(w_m[0], preds[0], w_m[1:], preds[1:], out=u)
            x = torch.add(u, x, alpha=keep)
        else:
            x = combine(keep, x, (*w_m, c_u), [*preds, u])
    return x


def _eps_setup(noise, ts, order, warmup):
    """What HB-on-PLMS and GHVB share: (AB order, beta, warm-up step, grid, eps-space steps, step orders)."""
    m, beta = split_order(order)
    g = grid_coeffs(noise, ts)
    return (m, beta, _warmup(warmup), g, *_eps_steps(g, m))


@per_run
def _hb_plan(noise, ts, order, warmup):
    m, beta, first, g, steps, orders = _eps_setup(noise, ts, order, warmup)
    w = [tuple(s * c for c in mixer_weights(o, 1.0)) for (_, s), o in zip(steps, orders)]
    on = [k > 0 for k in range(len(steps))]
    return g, _hb_steps("eps", g, _with_momentum(beta, *zip(*steps), w, on)), first


@register_solver("hb", steps=_steps, cost=_cost, describe=_describe)
def sample_hb(model, x, ts, noise, rng=None, order: float = 3.8, warmup="ab"):
    g, steps, first = _hb_plan(noise, ts, order, warmup)
    return _run_hb("eps", model, x, g, steps, first)


@per_run
def _hb_dpmpp_plan(noise, ts, order, lower_order_final):
    m, beta = split_order(order, max_order=2)
    g = grid_coeffs(noise, ts)
    orders = multistep_orders(len(ts) - 1, m, lower_order_final)
    keeps, E1, w = [], [], []
    for k, o in enumerate(orders):
        h = g.lam[k + 1] - g.lam[k]
        keeps.append(g.sigma[k + 1] / g.sigma[k])
        E1.append(g.alpha[k + 1] * (h * phi(1, -h)))
        w.append(on_predictions(g, k, o, E1[k], E1[k] / 2))  # D0 + 1/2 D1 (2M), D0 (first and final steps)
    on = [o == 2 and orders[k - 1] == 2 for k, o in enumerate(orders)]  # v starts at the first 2M step
    return g, _hb_steps("data", g, _with_momentum(beta, keeps, E1, w, on))


@register_solver("hb_dpmpp", describe=_describe_dpmpp)
def sample_hb_dpmpp(model, x, ts, noise, rng=None, order: float = 1.8, lower_order_final="below_10"):
    return _run_hb("data", model, x, *_hb_dpmpp_plan(noise, ts, order, lower_order_final))


@per_run
def _ghvb_plan(noise, ts, order, warmup):
    """v_k = (1 - beta) v_{k-1} + beta eps_k (v_0 = eps_0) is kept as vt_k = v_k / c_k with c_0 = 1/sigma_0,
    c_k = beta/sigma_k, so that vt_k = (x - alpha x0) + r_k vt_{k-1}: two passes into a recycled buffer.
    Per step (keep, S_k, r_k, weights on the true slope (warm-up), weights on vt_k, vt_{k-1}, ...); the weights are
    formed as hb's, so that beta = 1 is bit for bit hb's arithmetic."""
    m, beta, first, g, steps, orders = _eps_setup(noise, ts, order, warmup)
    b = [beta if k else 1.0 for k in range(len(steps))]
    plan = []
    for k, ((keep, s), o) in enumerate(zip(steps, orders)):
        r = (1 - beta) * g.sigma[k] / g.sigma[k - 1] * b[k - 1] / beta if k and beta != 1.0 else 0.0
        mix = tuple(s * w for w in mixer_weights(o, beta))
        plan.append((keep, s, r, mix, tuple(w * b[k - j] / g.sigma[k - j] for j, w in enumerate(mix))))
    return m, g, plan, first


@register_solver("ghvb", steps=_steps, cost=_cost, describe=_describe)
def sample_ghvb(model, x, ts, noise, rng=None, order: float = 3.8, warmup="ab"):
    m, g, plan, first = _ghvb_plan(noise, ts, order, warmup)
    vs, spare = deque(maxlen=m), None  # newest first; spare: the buffer that last dropped out
    for k, (keep, s, r, mix, w) in enumerate(plan):
        v = sigma_eps(model, x, g.t[k], g.alpha[k], g.sigma[k], out=spare)
        if r != 0.0:
            v.add_(vs[0], alpha=r)
        spare = vs[-1] if len(vs) == m else None
        vs.appendleft(v)
        if k == 0 and first is not None:
            x = combine(keep, x, mix, [first(model, x, g, v.mul(1.0 / g.sigma[0]), keep, s)])
        else:
            x = combine(keep, x, w, vs)
    return x
