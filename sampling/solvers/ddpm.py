"""DDPM ancestral sampling (Ho et al. 2020) on any grid of a VP/VE schedule.

A step t -> s draws x_s from the Gaussian posterior q(x_s | x_t, x_0 = D(x_t)). With
a = alpha_t / alpha_s and b = sigma_t^2 - a^2 sigma_s^2 (the forward noise added from s to t):

    mean = a sigma_s^2 / sigma_t^2 * x_t + alpha_s b / sigma_t^2 * x_0
    var  = sigma_s^2 b / sigma_t^2  ("fixed_small", the posterior)  or  b  ("fixed_large", Ho's beta_t)

NFE = steps. The grid ends at t_end > 0, so the last step also injects noise.
"""
from __future__ import annotations

import math

import torch

from common.registry import check_choice
from ..registry import register_solver
from .grid import grid_coeffs, per_run

VARIANCES = {"fixed_small": lambda sig_s, sig_t, b: sig_s**2 * b / sig_t**2,
             "fixed_large": lambda sig_s, sig_t, b: b}


def posterior_coeffs(g, i, variance):
    a = g.alpha[i] / g.alpha[i + 1]
    b = g.sigma[i] ** 2 - a**2 * g.sigma[i + 1] ** 2
    c_x = a * g.sigma[i + 1] ** 2 / g.sigma[i] ** 2
    c_0 = g.alpha[i + 1] * b / g.sigma[i] ** 2
    return c_x, c_0, math.sqrt(max(VARIANCES[variance](g.sigma[i + 1], g.sigma[i], b), 0.0))


@per_run
def _plan(noise, ts, variance):
    g = grid_coeffs(noise, ts)
    return [(g.t[i], *posterior_coeffs(g, i, variance)) for i in range(len(ts) - 1)]


@register_solver("ddpm", stochastic=True)
def sample_ddpm(model, x, ts, noise, rng=None, variance: str = "fixed_small"):
    check_choice("ddpm variance", variance, VARIANCES)
    buf = torch.empty_like(x)  # the caller's x is never written
    for t, c_x, c_0, std in _plan(noise, ts, variance):
        x0 = model(x, t)
        x = torch.mul(x, c_x, out=buf).add_(x0, alpha=c_0).add_(rng.like(x), alpha=std)  # draws even at std 0
    return x
