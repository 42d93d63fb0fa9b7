"""What multistep exponential integrators share: the update into one buffer, the history of model
predictions, DPM-Solver's divided differences, and a per-grid cache of the host-side weights.

Every step of dpmpp, dpm_solver (multistep), deis, unipc and dpmpp_sde is

    x_{k+1} = keep_k x_k + sum_j w_kj m_{k-j}      (m: the model's predictions, newest first)

with keep and w host floats that each solver's file builds from its paper's terms (``step_weights``)
once per run (``plan``, cached by ``grid.per_run``), so the loop is one ``combine`` per step (``run``).
"""
from __future__ import annotations

from collections import deque

import torch

from .expint import check_form
from .grid import grid_coeffs, per_run, sigma_eps
from .orders import multistep_orders


def combine(keep: float, x, weights, preds, out=None):
    """keep * x + sum_j weights[j] * preds[j], written into one new buffer (x and preds are left alone:
    the model may still hold x, and preds stay in the history), or into ``out``, a buffer the caller owns and
    the model never saw (it may be x itself: an update in place)."""
    if out is None:
        out = x.mul(keep)
    elif keep != 1.0 or out is not x:
        torch.mul(x, keep, out=out)
    for w, p in zip(weights, preds):
        if w != 0.0:
            out.add_(p, alpha=w)
    return out


def history_entry(eps: bool, model, x, g, k: int, out=None):
    """Step k's prediction as the eps-form histories keep it, sigma eps = x - alpha x0 (into ``out``, a history
    buffer about to drop out), or the model's x0 in the data form."""
    if eps:
        return sigma_eps(model, x, g.t[k], g.alpha[k], g.sigma[k], out=out)
    return model(x, g.t[k])


def run(form: str, model, x, g, steps):
    """steps[k] = (keep, weights on m_k, m_{k-1}, ...) for k -> k+1; m is the prediction in ``form``.

    In the eps form the history holds x - alpha x0 = sigma eps (one pass, buffers recycled) and 1/sigma
    moves into the weights. Every x_{k+1} is a new buffer: the x's the model saw and its predictions stay
    as they were (a model may keep them)."""
    size = max((len(w) for _, w in steps), default=1)
    history = deque(maxlen=size)  # newest first
    eps = check_form(form) == "eps"
    if eps:
        steps = [(keep, tuple(wj / g.sigma[k - j] for j, wj in enumerate(w))) for k, (keep, w) in enumerate(steps)]
    for k, (keep, w) in enumerate(steps):
        history.appendleft(history_entry(eps, model, x, g, k, out=history[-1] if len(history) == size else None))
        x = combine(keep, x, w, history)  # x_{k+1} = keep x_k + sum_j w_j m_{k-j}
    return x


def on_predictions(g, k: int, order: int, c0: float, c1: float = 0.0, c2: float = 0.0) -> tuple:
    """Weights on (m_k, m_{k-1}, m_{k-2}) of a step's  c0 D0 + c1 D1 + c2 D2  (DPM-Solver's multistep updates).

    With h = lambda_{k+1} - lambda_k and r0 = h_{k-1}/h, r1 = h_{k-2}/h the past step ratios:
        D0 = m_k,  D1_0 = (m_k - m_{k-1}) / r0,  D1_1 = (m_{k-1} - m_{k-2}) / r1,
        order 2:  D1 = D1_0;
        order 3:  D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r0+r1).
    """
    if order == 1:
        return (c0,)
    h = g.lam[k + 1] - g.lam[k]
    r0 = (g.lam[k] - g.lam[k - 1]) / h
    if order == 2:
        return (c0 + c1 / r0, -c1 / r0)
    r1 = (g.lam[k - 1] - g.lam[k - 2]) / h
    on_D1_0 = c1 * (1 + r0 / (r0 + r1)) + c2 / (r0 + r1)   # c1 D1 + c2 D2 = on_D1_0 D1_0 + on_D1_1 D1_1
    on_D1_1 = -(c1 * r0 + c2) / (r0 + r1)
    return (c0 + on_D1_0 / r0, on_D1_1 / r1 - on_D1_0 / r0, -on_D1_1 / r1)


@per_run
def plan(noise, ts, step_weights, order: int, lower_order_final, *options):
    """(grid, [step_weights(g, k, order_k, *options) for every step k -> k+1]), the orders from orders.py."""
    g = grid_coeffs(noise, ts)
    orders = multistep_orders(len(ts) - 1, order, lower_order_final)
    return g, [step_weights(g, k, o, *options) for k, o in enumerate(orders)]
