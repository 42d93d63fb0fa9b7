"""DDIM (Song, Meng & Ermon 2021), written for any (alpha, sigma) schedule.

eta=0 is the deterministic sampler (the first-order exponential integrator); eta=1 matches the
DDPM posterior variance. With h = lambda_next - lambda, the injected noise std is
c = eta * sigma_next * sqrt(1 - exp(-2h)), and the step is
x' = alpha' x0 + sqrt(sigma'^2 - c^2) eps + c z with eps = (x - alpha x0) / sigma.

clip_x0 (diffusers' clip_sample, on by default in DDIMScheduler): the x0 prediction is clamped to
[-clip_x0, clip_x0] but the step keeps the network's own eps, as diffusers does (it re-derives eps
from the clipped x0 only with use_clipped_model_output). The final step to sigma = 0 returns the
clamped x0.
"""
from __future__ import annotations

import math

import torch

from ..registry import register_solver
from .grid import ddim_coeffs, grid_coeffs, per_run


def _final(model, x, t, clip_x0=None, **_):
    x0 = model(x, t)
    return x0 if clip_x0 is None else x0.clamp(-clip_x0, clip_x0)


@per_run
def _plan(noise, ts, eta):
    """Per step (t, c_x, c_0, -keep alpha / sigma, alpha', c): x' = c_x x + c_0 x0 + c z."""
    g = grid_coeffs(noise, ts)
    out = []
    for i in range(len(ts) - 1):
        c = eta * g.sigma[i + 1] * math.sqrt(-math.expm1(-2 * (g.lam[i + 1] - g.lam[i])))
        keep = math.sqrt(max(g.sigma[i + 1] ** 2 - c**2, 0.0))
        c_x, c_0 = ddim_coeffs(g.alpha[i], g.sigma[i], g.alpha[i + 1], keep)
        out.append((g.t[i], c_x, c_0, -keep * g.alpha[i] / g.sigma[i], g.alpha[i + 1], c))
    return out


@register_solver("ddim", stochastic=True, final=_final)
def sample_ddim(model, x, ts, noise, rng=None, eta: float = 0.0, clip_x0: float | None = None):
    buf = torch.empty_like(x)  # the caller's x is never written
    clipped = None if clip_x0 is None else torch.empty_like(x)
    for t, c_x, c_0, c_eps, a_next, c in _plan(noise, ts, float(eta)):
        x0 = model(x, t)
        x = torch.mul(x, c_x, out=buf)
        if clip_x0 is None:
            x.add_(x0, alpha=c_0)
        else:  # eps from the network's own x0, the clamped x0 in its place
            x.add_(x0, alpha=c_eps).add_(torch.clamp(x0, -clip_x0, clip_x0, out=clipped), alpha=a_next)
        if c > 0:
            x.add_(rng.like(x), alpha=c)
    return x
