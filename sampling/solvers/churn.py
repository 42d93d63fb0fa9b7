"""EDM's stochastic churn (Karras et al. 2022, Algorithm 2), shared by the euler and heun solvers.

Before step i, if S_tmin <= s_i <= S_tmax, the noise level rises to s_hat = s_i * (1 + gamma) with
gamma = min(S_churn / N, sqrt(2) - 1) by adding fresh noise of std sqrt(s_hat^2 - s_i^2) * S_noise;
the step then starts from s_hat. S_churn = 0 (the default) is the deterministic sampler.
"""
from __future__ import annotations

import math

import numpy as np

from common.errors import NfebenchError


def churn_plan(noise, g, S_churn=0.0, S_tmin=0.0, S_tmax=None, S_noise=1.0):
    """Host-side per-step (t_hat, alpha_hat, s_hat, added noise std) in EDM coordinates."""
    # S_tmax = null means no upper limit (keeps configs and run records plain JSON).
    S_churn, S_tmin, S_noise = float(S_churn), float(S_tmin), float(S_noise)
    S_tmax = float("inf") if S_tmax is None else float(S_tmax)
    n = len(g.t) - 1
    gamma = [min(S_churn / n, math.sqrt(2.0) - 1.0) if S_churn > 0 and S_tmin <= g.s[i] <= S_tmax else 0.0
             for i in range(n)]
    s_hat = [g.s[i] * (1.0 + gamma[i]) for i in range(n)]
    t_hat = [float(noise.t_of_edm_sigma(s_hat[i])) if gamma[i] > 0 else g.t[i] for i in range(n)]
    back = noise.edm_sigma(np.asarray(t_hat))
    if not np.allclose(back, s_hat, rtol=1e-6, atol=0):
        # e.g. vp_discrete clamps beyond its last training step: the raised level does not exist.
        raise NfebenchError(f"churn raises the noise level above what the '{noise.name}' schedule can express; "
                            "lower S_churn or S_tmax")
    std = [S_noise * math.sqrt(max(s_hat[i] ** 2 - g.s[i] ** 2, 0.0)) for i in range(n)]
    return t_hat, [float(noise.alpha(t)) for t in t_hat], s_hat, std


def churn_(x, std, rng):
    """Adds the step's fresh noise to x in place (draws nothing when std = 0)."""
    return x.add_(rng.like(x), alpha=std) if std > 0 else x


def churn_vp_(x, scale, std, rng):
    """churn_ for x in the schedule's own coordinates (x = alpha x_edm): x <- scale x + std xi, with
    scale = alpha_hat / alpha_i and std the added noise's std times alpha_hat."""
    return x.mul_(scale).add_(rng.like(x), alpha=std) if std > 0 else x


def churn_describe(steps, S_churn=0.0, **_):
    return {"churn": float(S_churn) > 0, "gamma_max": min(float(S_churn) / steps, math.sqrt(2.0) - 1.0)}
