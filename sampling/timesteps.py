"""Time-step schedules: where a solver evaluates, as a decreasing float64 array of t.

Each entry of the `schedule` config group names one function here. A grid for N steps has
N+1 points from t_start (the noise schedule's T) down to t_end.
"""
from __future__ import annotations

import numpy as np

from .errors import NfebenchError

TIME_GRIDS: dict[str, callable] = {}


def register_grid(name):
    def wrap(fn):
        TIME_GRIDS[name] = fn
        return fn

    return wrap


@register_grid("time_uniform")
def time_uniform(noise, steps, t_start, t_end):
    return np.linspace(t_start, t_end, steps + 1)


@register_grid("time_quadratic")
def time_quadratic(noise, steps, t_start, t_end, power: float = 2.0):
    """Uniform in t^(1/power): denser near the data end (DDIM's CIFAR-10 choice)."""
    return _pin_ends(np.linspace(t_start ** (1 / power), t_end ** (1 / power), steps + 1) ** power, t_start, t_end)


@register_grid("logsnr")
def logsnr(noise, steps, t_start, t_end):
    lams = np.linspace(noise.lam(t_start), noise.lam(t_end), steps + 1)
    return _pin_ends(noise.t_of_lam(lams), t_start, t_end)


@register_grid("karras")
def karras(noise, steps, t_start, t_end, rho: float = 7.0, sigma_min: float | None = None,
           sigma_max: float | None = None):
    """EDM's rho-spaced sigmas; sigma_min/max default to the ends of [t_end, t_start]."""
    lo = float(noise.edm_sigma(t_end)) if sigma_min is None else float(sigma_min)
    hi = float(noise.edm_sigma(t_start)) if sigma_max is None else float(sigma_max)
    top = float(noise.edm_sigma(noise.T))
    if not 0 < lo < hi or hi > top * (1 + 1e-9):
        raise NfebenchError(f"karras schedule needs 0 < sigma_min < sigma_max <= {top:.6g}; got {lo}, {hi}")
    ramp = np.linspace(0.0, 1.0, steps + 1)
    sig = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    t = noise.t_of_edm_sigma(sig)
    return _pin_ends(t, t_start if sigma_max is None else t[0], t_end if sigma_min is None else t[-1])


@register_grid("explicit")
def explicit(noise, steps, t_start, t_end, ts=()):
    """A user-given grid; its length fixes the number of steps."""
    return np.asarray(ts, dtype=np.float64)


def _leading(n_train, steps):
    return np.arange(steps)[::-1] * (n_train // steps)


def _linspace(n_train, steps):
    return np.linspace(0, n_train - 1, steps).round()[::-1]


def _trailing(n_train, steps):
    # Indexing k * ratio instead of np.arange(N, 0, -ratio): the float arange can yield one extra
    # step (diffusers gives 62 timesteps ending at -1 for 61 steps of 1000); this never does.
    return np.round(n_train - np.arange(steps) * (n_train / steps)) - 1


# diffusers' `timestep_spacing` rules for integer training steps, largest first.
SPACINGS = {"leading": _leading, "linspace": _linspace, "trailing": _trailing}


@register_grid("discrete")
def discrete(noise, steps, t_start, t_end, spacing: str = "leading", steps_offset: int = 0):
    """Integer training steps of a discrete-time model, spaced as diffusers' schedulers space them.

    The `steps` model evaluations sit at the integer steps n that diffusers' `set_timesteps(steps)`
    produces (plus `steps_offset` for "leading"); n maps to t = (n + 1) / N. The grid then ends at
    t_end (default: the schedule's eps = 1/N, i.e. diffusers' final_alpha_cumprod = alphas_cumprod[0]
    with set_alpha_to_one=False). diffusers' alternative final step to alpha = 1 is the separate
    denoise_to_zero option, not a grid point.
    """
    n_train = getattr(noise, "num_train_timesteps", None)
    if n_train is None:
        raise NfebenchError(f"discrete time-step spacing needs a discrete-time (vp_discrete) schedule, not '{noise.name}'")
    if spacing not in SPACINGS:
        raise NfebenchError(f"unknown timestep spacing '{spacing}'; valid: {', '.join(SPACINGS)}")
    n = SPACINGS[spacing](n_train, steps).astype(np.int64) + (int(steps_offset) if spacing == "leading" else 0)
    t = (n + 1.0) / n_train
    if len(n) != steps or n.max() >= n_train or t[-1] <= t_end:
        raise NfebenchError(f"'{spacing}' spacing (steps_offset={steps_offset}) of {steps} steps gives training steps "
                            f"{n.tolist()}, which must lie above t_end={t_end:g} and below {n_train}; "
                            "use steps_offset=1, 'trailing', or a smaller t_end")
    return np.append(t, t_end)


def _pin_ends(t, t_start, t_end):
    # Round-tripping through lambda moves the ends by ~1e-16; keep them exact so grids compare equal.
    t = np.array(t, dtype=np.float64)
    t[0], t[-1] = t_start, t_end
    return t


def make_grid(noise, steps: int, name: str, t_end: float | None = None, **params) -> np.ndarray:
    if name not in TIME_GRIDS:
        raise NfebenchError(f"unknown time-step schedule '{name}'; valid: {', '.join(sorted(TIME_GRIDS))}")
    t_end = noise.eps if t_end is None else float(t_end)
    t = TIME_GRIDS[name](noise, steps, float(noise.T), t_end, **params)
    if t.ndim != 1 or len(t) < 2 or not np.all(np.isfinite(t)):
        raise NfebenchError(f"time-step schedule '{name}' needs at least 2 finite time points")
    if not np.all(np.diff(t) < 0):
        raise NfebenchError(f"time-step schedule '{name}' must be strictly decreasing in t; got {t.tolist()}")
    if t[0] > noise.T * (1 + 1e-12) or t[-1] <= 0:
        raise NfebenchError(f"time-step schedule '{name}' must lie in (0, {noise.T}]; got [{t[-1]}, {t[0]}]")
    return t
