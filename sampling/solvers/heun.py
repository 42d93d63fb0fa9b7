"""EDM's 2nd-order Heun sampler (Karras et al. 2022, Algorithms 1 and 2).

In EDM coordinates (x / alpha, s = sigma / alpha), a step from s_hat to s' takes the slope
d = (x - D(x; s_hat)) / s_hat, the Euler point x_e = x + (s' - s_hat) d and its slope d', then
x' = x + (s' - s_hat) (d + d') / 2. The loop keeps x in the schedule's own coordinates (alpha times
that), with the alphas in the per-step weights, so that the model reads x and x_e as they are.

``final_euler`` (default true) leaves the correction out of the last grid step, so N steps cost
2N - 1 evaluations; false corrects every step (2N).

``final_step: edm`` is EDM's Algorithm 1 as generate.py runs it: Heun steps (all corrected) down
to the last grid point sigma_min, then a plain Euler step from sigma_min to 0, which is the x0
prediction there. EDM's N steps are N - 1 grid steps plus that one: 2N - 1 NFE (35 at N = 18).
It differs from final_euler=true, which drops the correction of a real step ending at sigma_min.
final_euler is unused with final_step=edm.
S_churn > 0 adds EDM's stochastic churn before each step (see churn.py); default off.
"""
from __future__ import annotations

import torch

from common.registry import check_choice
from ..registry import register_solver
from .churn import churn_describe, churn_plan, churn_vp_
from .grid import grid_coeffs, per_run

FINAL_STEPS = (None, "edm")


def _check(final_step, S_churn=0.0):
    check_choice("heun final_step", final_step, FINAL_STEPS)
    if final_step == "edm" and float(S_churn) > 0:
        # EDM's Algorithm 2 sets gamma from its N steps and may churn before the final Euler step too
        raise ValueError("final_step=edm is EDM's deterministic Algorithm 1; use S_churn=0")


def _steps(nfe, final_euler=True, final_step=None, S_churn=0.0, **_):
    _check(final_step, S_churn)
    if final_step == "edm":
        return (nfe - 1) // 2
    return (nfe + 1) // 2 if final_euler else nfe // 2


def _cost(steps, final_euler=True, final_step=None, **_):
    _check(final_step)
    if final_step == "edm":
        return 2 * steps + 1
    return 2 * steps - 1 if final_euler else 2 * steps


@per_run
def _plan(noise, ts, correct_last, S_churn, S_tmin, S_tmax, S_noise):
    """Per step, in the schedule's coordinates x = alpha x_edm: the churn (scale, noise std), t_hat, the
    Euler point c_x x + c_0 D, the d part of the update p x + q D, and the d' part r (x_e - alpha' D')."""
    g = grid_coeffs(noise, ts)
    t_hat, a_hat, s_hat, std = churn_plan(noise, g, S_churn, S_tmin, S_tmax, S_noise)
    n, out = len(ts) - 1, []
    for i in range(n):
        h, a1 = g.s[i + 1] - s_hat[i], g.alpha[i + 1]
        w = -h / s_hat[i]  # x_edm + h d = (1 - w) x_edm + w D
        out.append((a_hat[i] / g.alpha[i], a_hat[i] * std[i], t_hat[i], a1 * (1 - w) / a_hat[i], a1 * w,
                    a1 * (1 + h / (2 * s_hat[i])) / a_hat[i], -a1 * h / (2 * s_hat[i]), h / (2 * g.s[i + 1]), a1,
                    g.t[i + 1], i < n - 1 or correct_last))
    return g, out


@register_solver("heun", steps=_steps, cost=_cost, describe=churn_describe, stochastic=True)
def sample_heun(model, x, ts, noise, rng=None, final_euler: bool = True, final_step: str | None = None,
                S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float | None = None, S_noise: float = 1.0):
    _check(final_step, S_churn)
    g, steps = _plan(noise, ts, final_step == "edm" or not final_euler, S_churn, S_tmin, S_tmax, S_noise)
    x = x.clone()  # the caller's x is never written
    x_e = torch.empty_like(x)
    for churn, std, t_hat, c_x, c_0, p, q, r, a_next, t_next, correct in steps:
        churn_vp_(x, churn, std, rng)
        x0 = model(x, t_hat)
        if not correct:  # Euler
            x.mul_(c_x).add_(x0, alpha=c_0)
            continue
        torch.mul(x, c_x, out=x_e).add_(x0, alpha=c_0)
        # x' = x + h/2 (d + d') with d = (x - D) / s_hat and s' d' = x_e - D' (EDM coordinates): the d part
        # first, while D is fresh
        x.mul_(p).add_(x0, alpha=q)
        x0 = model(x_e, t_next)
        x.add_(x_e.sub_(x0, alpha=a_next), alpha=r)
    if final_step == "edm":
        # Euler from sigma_min to 0: x + (0 - s) (x - D) / s = D, the x0 prediction at sigma_min
        return model(x, g.t[-1])
    return x
