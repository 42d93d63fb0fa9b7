"""Pseudo numerical methods (Liu et al. 2022, PNDM): PLMS, S-PNDM, F-PNDM.

The "transfer" phi(x, e, t -> t') is DDIM's update with noise estimate e (PNDM eq. 9),
an exact step when e is constant. Pseudo methods feed it a combined e:

- linear multistep (Adams-Bashforth on past model evaluations, uniform-step weights);
- pseudo improved Euler (warm-up of PLMS and S-PNDM): e' = (e_t + e(phi(x, e_t, t -> t'), t')) / 2, 2 NFE;
- pseudo Runge-Kutta 4 (warm-up of F-PNDM, 3 steps): 4 NFE each. ``midpoint`` places the half
  steps: "sigma" (default) at the midpoint in EDM sigma = sigma/alpha, the variable in which phi is
  an Euler step, so that the warm-up is a true RK4 step in that variable; "time" at the midpoint in t, which is
  what the PNDM code and diffusers do (the middle of the discrete time index); "diffusers" with
  PNDMScheduler's integer rounding (equal to "time" when the step ratio is even).

NFE for S steps: plms and s_pndm spend S + 1 (one extra call in the first step, as in the LDM
PLMS sampler and diffusers' PNDMScheduler with skip_prk_steps); f_pndm spends 4*3 + (S - 3) = S + 9
(the PNDM paper's count), or 4S when S < 3.

zero_step: diffusers' PNDMScheduler() (leading spacing, steps_offset 0, set_alpha_to_one False) has training
step 0 as its last timestep and still calls the model there, then steps to final_alpha_cumprod =
alphas_cumprod[0], the same point: x is unchanged. zero_step=True makes that one call too (counted, its result
unused) so the NFE count is diffusers' own: S + 10 for f_pndm.
"""
from __future__ import annotations

import torch

from common.errors import NfebenchError
from common.registry import check_choice
from ..registry import register_solver
from .adams import History, ab_weights
from .grid import grid_coeffs, per_run, sigma_eps
from .multistep import combine

# method -> (warm-up kind, steps of warm-up, highest multistep order)
METHODS = {"plms": ("heun", 1, 4), "s_pndm": ("heun", 1, 2), "f_pndm": ("rk4", 3, 4)}
WARMUP_NFE = {"heun": 2, "rk4": 4}
# weights of the warm-up's stage estimates in its combined e (pseudo improved Euler, pseudo RK4)
WARMUP_WEIGHTS = {"heun": (0.5, 0.5), "rk4": (1 / 6, 1 / 3, 1 / 3, 1 / 6)}


def _method(method):
    return METHODS[check_choice("pndm method", method, METHODS)]


def _cost(steps, method="plms", zero_step=False, **_):
    kind, warm, _ = _method(method)
    n_warm = min(steps, warm)
    return WARMUP_NFE[kind] * n_warm + (steps - n_warm) + int(bool(zero_step))


def _steps(nfe, method="plms", zero_step=False, **_):
    kind, warm, _ = _method(method)
    nfe -= int(bool(zero_step))
    full_warm = WARMUP_NFE[kind] * warm
    return nfe - full_warm + warm if nfe >= full_warm else nfe // WARMUP_NFE[kind]


def _describe(steps, method="plms", zero_step=False, **_):
    kind, warm, order = _method(method)
    n_warm = min(steps, warm)
    orders = [kind] * n_warm + [min(order, k + 1) for k in range(n_warm, steps)]
    return {"warmup": kind, "warmup_steps": n_warm, "step_orders": orders + ["zero_step"] * bool(zero_step)}


def transfer_coeffs(noise, t, t_next):
    """(c_x, c_e) with phi(x, e, t -> t_next) = c_x x + c_e e (DDIM with a given eps)."""
    a, s, a1, s1 = (float(v) for v in (noise.alpha(t), noise.sigma(t), noise.alpha(t_next), noise.sigma(t_next)))
    return a1 / a, s1 - a1 * s / a


def eps_at(model, y, t, a, s):
    """sigma times the noise estimate, y - a D(y), written over y (a stage input nothing else reads, once the
    model has returned); the 1/sigma is in the host weights."""
    return sigma_eps(model, y, t, a, s, out=y)


def phi(x, e, c):
    """The transfer c_x x + c_e e, as a new tensor."""
    return torch.mul(x, c[0]).add_(e, alpha=c[1])


def _pseudo_heun(model, x, e1, i, g, plan):
    (c,) = plan.stages[i]
    return e1, eps_at(model, phi(x, e1, c), g.t[i + 1], g.alpha[i + 1], g.sigma[i + 1])


def _pseudo_rk4(model, x, e1, i, g, plan):
    t_m, a_m, s_m = plan.mid[i][:3]
    c_1, c_m, c_end = plan.stages[i]
    e2 = eps_at(model, phi(x, e1, c_1), t_m, a_m, s_m)
    e3 = eps_at(model, phi(x, e2, c_m), t_m, a_m, s_m)
    return e1, e2, e3, eps_at(model, phi(x, e3, c_end), g.t[i + 1], g.alpha[i + 1], g.sigma[i + 1])


def _diffusers_midpoint(noise, g, i):
    # diffusers' PRK, from training step n to n' = n - r: the model sees step n' + r // 2, but the first
    # half step lands x at n - r // 2; the two differ by one step when r is odd (e.g. 111 for 9 steps).
    n_train = getattr(noise, "num_train_timesteps", None)
    if n_train is None:
        raise NfebenchError(f"pndm midpoint 'diffusers' needs a discrete-time (vp_discrete) schedule, not '{noise.name}'")
    n, n_next = round(g.t[i] * n_train) - 1, round(g.t[i + 1] * n_train) - 1
    h = (n - n_next) // 2
    return (n_next + h + 1.0) / n_train, (n - h + 1.0) / n_train


# rule -> (time of the half-step evaluations, time the first half step lands at)
MIDPOINTS = {"sigma": lambda noise, g, i: (float(noise.t_of_edm_sigma(0.5 * (g.s[i] + g.s[i + 1]))),) * 2,
             "time": lambda noise, g, i: (0.5 * (g.t[i] + g.t[i + 1]),) * 2,
             "diffusers": _diffusers_midpoint}


WARMUPS = {"heun": _pseudo_heun, "rk4": _pseudo_rk4}


def _midpoints(noise, g, rule):
    place, out = MIDPOINTS[check_choice("pndm midpoint", rule, MIDPOINTS)], []
    for i in range(len(g.t) - 1):
        t_m, t_land = place(noise, g, i)
        out.append((t_m, float(noise.alpha(t_m)), float(noise.sigma(t_m)), transfer_coeffs(noise, g.t[i], t_land),
                    transfer_coeffs(noise, g.t[i], t_m)))
    return out


class _Plan:
    """Host-side: the transfer of every step, the RK4 midpoints, per step the weights (times c_e) of the
    estimates its combined e is made of, and the warm-up's stage transfers; every estimate is sigma eps, so the
    weights and the stages' c_e carry its 1/sigma."""

    def __init__(self, noise, ts, method, midpoint):
        kind, warm, order = _method(method)
        self.g = g = grid_coeffs(noise, ts)
        steps = len(ts) - 1
        self.phi = [transfer_coeffs(noise, g.t[i], g.t[i + 1]) for i in range(steps)]
        self.mid = _midpoints(noise, g, midpoint) if kind == "rk4" else None
        self.warmup = [WARMUPS[kind] if i < warm else None for i in range(steps)]
        # every estimate is sigma eps (its sigma: of the grid point, or the midpoint for RK4's middle stages)
        self.stages, self.weights = [], []
        for i in range(steps):
            if i < warm:
                sig = (g.sigma[i], g.sigma[i + 1]) if kind == "heun" else \
                    (g.sigma[i], self.mid[i][2], self.mid[i][2], g.sigma[i + 1])
                self.weights.append(tuple(self.phi[i][1] * w / s for w, s in zip(WARMUP_WEIGHTS[kind], sig)))
                transfers = (self.phi[i],) if kind == "heun" else (self.mid[i][3], self.mid[i][4], self.phi[i])
                self.stages.append(tuple((c_x, c_e / s) for (c_x, c_e), s in zip(transfers, sig)))
            else:
                self.weights.append(tuple(w / g.sigma[i - j]
                                          for j, w in enumerate(ab_weights(min(order, i + 1), self.phi[i][1]))))
                self.stages.append(None)


_plan = per_run(_Plan)


@register_solver("pndm", steps=_steps, cost=_cost, describe=_describe)
def sample_pndm(model, x, ts, noise, rng=None, method: str = "plms", midpoint: str = "sigma", zero_step: bool = False):
    plan = _plan(noise, ts, method, midpoint)
    g = plan.g
    history = History(4)  # sigma * eps at the grid points, newest first
    buf = torch.empty_like(x)  # the caller's x is never written
    for i, (warmup, weights) in enumerate(zip(plan.warmup, plan.weights)):
        e = history.push(sigma_eps(model, x, g.t[i], g.alpha[i], g.sigma[i], out=history.buffer(x)))  # sigma_i eps_i
        estimates = warmup(model, x, e, i, g, plan) if warmup else history.items  # 1/sigma is in the weights
        x = combine(plan.phi[i][0], x, weights, estimates, out=buf)
    if zero_step:
        model(x, g.t[-1])
    return x
