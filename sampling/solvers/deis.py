"""DEIS tAB (Zhang & Chen 2023): the eps-form exponential integrator with Lagrange extrapolation
through the last `order` evaluations. In EDM coordinates (x/alpha, rho = sigma/alpha) one step is

    x_{k+1} = alpha_{k+1}/alpha_k x_k + alpha_{k+1} sum_j w_j eps_{k-j},   w_j = int ell_j d rho

``basis`` is the variable the polynomial lives in:
  t:      the paper's tAB: ell_j(tau) in time, integrated against rho'(tau) (by parts, Gauss-Legendre;
          exact up to ~1e-15 for smooth schedules);
  logrho: ell_j in log rho = -lambda, in closed form with phi functions (diffusers' DEISMultistepScheduler).
Warm-up and the lower-order-final rule come from orders.py. NFE = steps.
"""
from __future__ import annotations

import numpy as np

from common.registry import check_choice
from ..registry import register_solver
from . import multistep
from .expint import lagrange_weights, step
from .grid import grid_coeffs, per_run
from .orders import describe_multistep, multistep_orders

GAUSS = np.polynomial.legendre.leggauss(16)


def _logrho_weights(g, k, order, noise):
    h = g.lam[k + 1] - g.lam[k]
    return lagrange_weights(step("eps", g, k, k + 1), [(g.lam[k - i] - g.lam[k]) / h for i in range(order)])


def _lagrange(nodes, j):
    ell = np.polynomial.Polynomial([1.0])
    for i, n in enumerate(nodes):
        if i != j:
            ell = ell * np.polynomial.Polynomial([-n, 1.0]) / (nodes[j] - n)
    return ell


def _t_weights(g, k, order, noise):
    """alpha_{k+1} * int_0^1 ell_j(u) d rho(t(u)), u = (t - t_k)/(t_{k+1} - t_k), by parts so rho' is never needed."""
    dt = g.t[k + 1] - g.t[k]
    nodes = np.array([(g.t[k - i] - g.t[k]) / dt for i in range(order)])
    x, w = GAUSS
    u = 0.5 * (x + 1.0)
    rho_u = noise.edm_sigma(g.t[k] + u * dt)
    out = []
    for j in range(order):
        ell = _lagrange(nodes, j)
        integral = ell(1.0) * g.s[k + 1] - ell(0.0) * g.s[k] - 0.5 * float(np.sum(w * ell.deriv()(u) * rho_u))
        out.append(g.alpha[k + 1] * integral)
    return out


BASES = {"t": _t_weights, "logrho": _logrho_weights}


def deis_weights(g, orders, basis, noise):
    weights = BASES[check_choice("deis basis", basis, BASES)]
    return [weights(g, k, o, noise) for k, o in enumerate(orders)]


@per_run
def plan(noise, ts, order: int, lower_order_final, basis: str):
    """(grid, steps): x_{k+1} = alpha_{k+1}/alpha_k x_k + sum_j w_j eps_{k-j}; the quadrature runs once per run."""
    g = grid_coeffs(noise, ts)
    weights = deis_weights(g, multistep_orders(len(ts) - 1, order, lower_order_final), basis, noise)
    return g, [(g.alpha[k + 1] / g.alpha[k], tuple(float(v) for v in w)) for k, w in enumerate(weights)]


def _describe(steps, order=3, lower_order_final="below_15", basis="t", **_):
    return {**describe_multistep(steps, order, lower_order_final), "basis": basis}


@register_solver("deis", describe=_describe)
def sample_deis(model, x, ts, noise, rng=None, order: int = 3, lower_order_final="below_15", basis="t"):
    g, steps = plan(noise, ts, int(order), lower_order_final, basis)
    return multistep.run("eps", model, x, g, steps)
