"""DDIM (Song, Meng & Ermon 2021), written for any (alpha, sigma) schedule.

eta=0 is the deterministic sampler (the first-order exponential integrator); eta=1 matches the
DDPM posterior variance. With h = lambda_next - lambda, the injected noise std is
c = eta * sigma_next * sqrt(1 - exp(-2h)).

clip_x0 (diffusers' clip_sample, on by default in DDIMScheduler): the x0 prediction is clamped to
[-clip_x0, clip_x0] but the step keeps the network's own eps, as diffusers does (it re-derives eps
from the clipped x0 only with use_clipped_model_output). The final step to sigma = 0 returns the
clamped x0.
"""
from __future__ import annotations

import math

from ..registry import register_solver
from .grid import grid_coeffs


def _final(model, x, t, clip_x0=None, **_):
    x0 = model(x, t)
    return x0 if clip_x0 is None else x0.clamp(-clip_x0, clip_x0)


@register_solver("ddim", stochastic=True, final=_final)
def sample_ddim(model, x, ts, noise, rng=None, eta: float = 0.0, clip_x0: float | None = None):
    g = grid_coeffs(noise, ts)
    steps = len(ts) - 1
    c = [eta * g.sigma[i + 1] * math.sqrt(-math.expm1(-2 * (g.lam[i + 1] - g.lam[i]))) for i in range(steps)]
    keep = [math.sqrt(max(g.sigma[i + 1] ** 2 - c[i] ** 2, 0.0)) for i in range(steps)]
    for i in range(steps):
        x0 = model(x, g.t[i])
        eps = (x - g.alpha[i] * x0) / g.sigma[i]
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        x = g.alpha[i + 1] * x0 + keep[i] * eps
        if c[i] > 0:
            x = x + c[i] * rng.like(x)
    return x
