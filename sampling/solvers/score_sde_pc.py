"""Predictor-corrector sampling of the reverse SDE (Song et al. 2021, Algorithms 2-3).

Each step t_i -> t_{i+1} runs n_corrector Langevin corrector moves at t_i, then one predictor
step; every move evaluates the model once, so NFE = steps * (n_corrector + 1).

The score comes from the data prediction: score = (alpha x0 - x) / sigma^2. With the step's
forward transition x_t = a x_s + sqrt(b) z (a = alpha_t/alpha_s, b = sigma_t^2 - a^2 sigma_s^2):

- reverse_diffusion: x <- (2 - a) x + b score + sqrt(b) z  (Song et al.'s discretisation; VE: a = 1,
  VP: a = sqrt(1 - beta_i));
- euler_maruyama: x <- x - (f x - g^2 score) dt + g sqrt(dt) z with f = dlog(alpha)/dt and
  g^2 = d(sigma^2)/dt - 2 f sigma^2 at t_i (derivatives by central differences on the host);
- Langevin corrector: step = 2 a^2 (snr |z| / |score|)^2 per sample (a^2 = 1 - beta_i for VP, 1 for VE),
  x <- x + step score + sqrt(2 step) z.
"""
from __future__ import annotations

import math

import torch

from common.registry import check_choice
from ..registry import register_solver
from .grid import grid_coeffs, per_run


def _score(model, x, t, a, s, out):
    """(a D(x) - x) / s^2 into ``out``."""
    x0 = model(x, t)
    return torch.mul(x0, a, out=out).sub_(x).div_(s**2)


def _per_sample_norm(v):
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))


def _drift_diffusion(noise, t):
    # Central differences; one-sided at T, where some schedules (vp_discrete) stop.
    h = 1e-6 * max(1.0, float(noise.T))
    lo, hi = t - h, min(t + h, float(noise.T))
    f = float(noise.log_alpha(hi) - noise.log_alpha(lo)) / (hi - lo)
    dvar = float(noise.sigma(hi) ** 2 - noise.sigma(lo) ** 2) / (hi - lo)
    return f, dvar - 2 * f * float(noise.sigma(t)) ** 2


def _reverse_diffusion(noise, g, i):
    a = g.alpha[i] / g.alpha[i + 1]
    b = g.sigma[i] ** 2 - a**2 * g.sigma[i + 1] ** 2
    return 2.0 - a, b, math.sqrt(b)


def _euler_maruyama(noise, g, i):
    dt = g.t[i] - g.t[i + 1]
    f, g2 = _drift_diffusion(noise, g.t[i])
    return 1.0 - f * dt, g2 * dt, math.sqrt(g2 * dt)


PREDICTORS = {"reverse_diffusion": _reverse_diffusion, "euler_maruyama": _euler_maruyama}


def _cost(steps, n_corrector=1, **_):
    return steps * (int(n_corrector) + 1)


def _steps(nfe, n_corrector=1, **_):
    return nfe // (int(n_corrector) + 1)


@per_run
def _plan(noise, ts, predictor, snr):
    """Per step (t, alpha, sigma, Langevin factor 2 a^2 snr^2, predictor's (c_x, c_score, noise std))."""
    g = grid_coeffs(noise, ts)
    predict = PREDICTORS[predictor]
    return [(g.t[i], g.alpha[i], g.sigma[i], 2.0 * (g.alpha[i + 1] / g.alpha[i]) ** -2 * snr**2, predict(noise, g, i))
            for i in range(len(ts) - 1)]


@register_solver("score_sde_pc", steps=_steps, cost=_cost, stochastic=True)
def sample_score_sde_pc(model, x, ts, noise, rng=None, predictor: str = "reverse_diffusion",
                        n_corrector: int = 1, snr: float = 0.16):
    check_choice("score_sde_pc predictor", predictor, PREDICTORS)
    buf, score = torch.empty_like(x), torch.empty_like(x)  # the caller's x is never written
    for t, a, s, lang, (c_x, c_s, std) in _plan(noise, ts, predictor, float(snr)):
        for _ in range(int(n_corrector)):
            _score(model, x, t, a, s, score)
            z = rng.like(x)
            step = lang * (_per_sample_norm(z) / _per_sample_norm(score)) ** 2  # per sample, on device
            x = torch.addcmul(x, step, score, out=buf).addcmul_((2.0 * step).sqrt(), z)
        _score(model, x, t, a, s, score)
        x = torch.mul(x, c_x, out=buf).add_(score, alpha=c_s).add_(rng.like(x), alpha=std)
    return x
