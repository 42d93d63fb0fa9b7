"""Exponential-integrator coefficients: phi functions, one step in the data or eps form, Lagrange weights.

Used by DPM-Solver(++) (multistep and singlestep), UniPC and DEIS. SDE-DPM-Solver++ (dpmpp_sde.py)
integrates the reverse SDE, whose integrating factor is e^{-2h}, and writes its few coefficients itself.

Over one step from lambda_s to lambda_t (h = lambda_t - lambda_s) the probability-flow ODE is
solved exactly up to the integral of the model prediction (Lu et al. 2022a/b):

    data form: x_t = sigma_t/sigma_s x_s + alpha_t * int_0^h e^{-(h-u)} x0(lambda_s + u) du
    eps form:  x_t = alpha_t/alpha_s x_s - sigma_t * int_0^h e^{+(h-u)} eps(lambda_s + u) du

so a form is (keep, scale, z = sign * h) and every solver differs only in how it approximates the
prediction under the integral. ``phi`` are the usual phi_k(z) = int_0^1 e^{(1-v)z} v^{k-1}/(k-1)! dv.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.registry import check_choice

FORMS = ("data", "eps")


def phi(k: int, z: float) -> float:
    """phi_k(z); the series near 0 avoids the cancellation of the recursion for tiny steps."""
    if abs(z) < 0.5:
        return sum(z**j / math.factorial(j + k) for j in range(30))
    p = math.expm1(z) / z
    for j in range(1, k):
        p = (p - 1.0 / math.factorial(j)) / z
    return p


def check_form(form: str) -> str:
    return check_choice("prediction form", form, FORMS)


@dataclass(frozen=True)
class Step:
    """One exponential-integrator step s -> t in a given form, on host floats."""
    keep: float    # multiplies x_s
    scale: float   # alpha_t (data) or -sigma_t (eps): multiplies the integral of the prediction
    h: float       # lambda_t - lambda_s
    z: float       # sign * h, the argument of phi

    def E(self, k: int) -> float:
        """int_0^h e^{sign(h-u)} u^{k-1}/(k-1)! du / h^{k-1} = h * phi_k(z): the weight of the k-th Taylor term."""
        return self.h * phi(k, self.z)


def step_between(form: str, start, end) -> Step:
    """Step between two (alpha, sigma, lambda) triples."""
    (a_s, s_s, l_s), (a_t, s_t, l_t) = start, end
    h = l_t - l_s
    if check_form(form) == "data":
        return Step(s_t / s_s, a_t, h, -h)
    return Step(a_t / a_s, -s_t, h, h)


def step(form: str, g, s: int, t: int) -> Step:
    """Step between grid indices s -> t of GridCoeffs g."""
    return step_between(form, (g.alpha[s], g.sigma[s], g.lam[s]), (g.alpha[t], g.sigma[t], g.lam[t]))


def lagrange_weights(st: Step, nodes) -> list[float]:
    """Weights on predictions at lambda_s + nodes[j]*h that integrate their Lagrange interpolant exactly.

    nodes are fractions of h (0 is the step start; past points are negative). This is DEIS's
    polynomial extrapolation (in lambda = -log rho) and the linear stages of DPM-Solver-3.
    """
    # moments int_0^1 e^{z(1-v)} v^k dv = k! phi_{k+1}(z), times h for du = h dv
    moments = np.array([st.h * math.factorial(k) * phi(k + 1, st.z) for k in range(len(nodes))])
    return [st.scale * float(coeffs @ moments) for coeffs in lagrange_basis(nodes)]


def lagrange_basis(nodes) -> list[np.ndarray]:
    """Coefficients of the Lagrange basis polynomials ell_j(v) on the nodes, lowest degree first."""
    nodes = np.asarray(nodes, dtype=np.float64)
    basis = []
    for j, nj in enumerate(nodes):
        others = np.delete(nodes, j)
        basis.append(np.atleast_1d(np.poly(others))[::-1] / np.prod(nj - others))
    return basis


def predict(form: str, model, x, t: float, alpha: float, sigma: float):
    """The model's prediction in the solver's form (the model always returns x0)."""
    x0 = model(x, t)
    # (x - alpha x0) / sigma as x/sigma - (alpha/sigma) x0: two passes into one new buffer
    return x0 if form == "data" else x0.mul(-alpha / sigma).add_(x, alpha=1.0 / sigma)
