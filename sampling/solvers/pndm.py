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

from common.errors import NfebenchError
from ..registry import register_solver
from .grid import grid_coeffs

# Adams-Bashforth weights on (e_k, e_{k-1}, ...) for uniform steps, orders 1-4.
AB = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))

# method -> (warm-up kind, steps of warm-up, highest multistep order)
METHODS = {"plms": ("heun", 1, 4), "s_pndm": ("heun", 1, 2), "f_pndm": ("rk4", 3, 4)}
WARMUP_NFE = {"heun": 2, "rk4": 4}


def _method(method):
    if method not in METHODS:
        raise NfebenchError(f"pndm method must be one of {', '.join(METHODS)}; got '{method}'")
    return METHODS[method]


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


def combine(history, order):
    """Adams-Bashforth combination of the newest `order` estimates (history newest first)."""
    return sum(w * e for w, e in zip(AB[order - 1], history))


def eps_of(model, x, t, a, s):
    return (x - a * model(x, t)) / s


def _pseudo_heun(model, x, e1, i, g, phi, mid=None):
    x1 = phi[i][0] * x + phi[i][1] * e1
    e2 = eps_of(model, x1, g.t[i + 1], g.alpha[i + 1], g.sigma[i + 1])
    return 0.5 * (e1 + e2)


def _pseudo_rk4(model, x, e1, i, g, phi, mid):
    t_m, a_m, s_m, (cx_1, ce_1), (cx_m, ce_m) = mid[i]
    e2 = eps_of(model, cx_1 * x + ce_1 * e1, t_m, a_m, s_m)
    e3 = eps_of(model, cx_m * x + ce_m * e2, t_m, a_m, s_m)
    e4 = eps_of(model, phi[i][0] * x + phi[i][1] * e3, g.t[i + 1], g.alpha[i + 1], g.sigma[i + 1])
    return (e1 + 2 * e2 + 2 * e3 + e4) / 6


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
    if rule not in MIDPOINTS:
        raise NfebenchError(f"pndm midpoint must be one of {', '.join(MIDPOINTS)}; got '{rule}'")
    out = []
    for i in range(len(g.t) - 1):
        t_m, t_land = MIDPOINTS[rule](noise, g, i)
        out.append((t_m, float(noise.alpha(t_m)), float(noise.sigma(t_m)), transfer_coeffs(noise, g.t[i], t_land),
                    transfer_coeffs(noise, g.t[i], t_m)))
    return out


@register_solver("pndm", steps=_steps, cost=_cost, describe=_describe)
def sample_pndm(model, x, ts, noise, rng=None, method: str = "plms", midpoint: str = "sigma", zero_step: bool = False):
    kind, warm, order = _method(method)
    g = grid_coeffs(noise, ts)
    steps = len(ts) - 1
    phi = [transfer_coeffs(noise, g.t[i], g.t[i + 1]) for i in range(steps)]
    mid = _midpoints(noise, g, midpoint) if kind == "rk4" else None
    history = []  # noise estimates at the grid points, newest first
    for i in range(steps):
        e = eps_of(model, x, g.t[i], g.alpha[i], g.sigma[i])
        history = [e] + history[:3]
        if i < warm:
            e = WARMUPS[kind](model, x, e, i, g, phi, mid)
        else:
            e = combine(history, min(order, len(history)))
        x = phi[i][0] * x + phi[i][1] * e
    if zero_step:
        model(x, g.t[-1])
    return x
