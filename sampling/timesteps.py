"""Time-step schedules: where a solver evaluates, as a decreasing float64 array of t.

Each entry of the `schedule` config group names one function here. A grid for N steps has
N+1 points from t_start (the noise schedule's T) down to t_end.
"""
from __future__ import annotations

import numpy as np

from common.errors import NfebenchError
from common.registry import Registry, check_choice

GRIDS = Registry("time-step schedule")
register_grid = GRIDS.register


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


def fixed_steps(grid_name: str, grid_opts: dict) -> int | None:
    """The number of steps a grid fixes by itself (an explicit grid: its length - 1); None when the
    solver's NFE budget decides it."""
    return len(grid_opts.get("ts") or ()) - 1 if grid_name == "explicit" else None


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
    spaced = SPACINGS[check_choice("timestep spacing", spacing, SPACINGS)]
    n = spaced(n_train, steps).astype(np.int64) + (int(steps_offset) if spacing == "leading" else 0)
    t = (n + 1.0) / n_train
    if len(n) != steps or n.max() >= n_train or t[-1] <= t_end:
        raise NfebenchError(f"'{spacing}' spacing (steps_offset={steps_offset}) of {steps} steps gives training steps "
                            f"{n.tolist()}, which must lie above t_end={t_end:g} and below {n_train}; "
                            "use steps_offset=1, 'trailing', or a smaller t_end")
    return np.append(t, t_end)


def _discrete_steps(noise, what):
    n_train = getattr(noise, "num_train_timesteps", None)
    if n_train is None:
        raise NfebenchError(f"{what} needs a discrete-time (vp_discrete) schedule, not '{noise.name}'")
    return n_train


def _final_points(noise, n, final, t_end, what):
    """Grid from training steps n (largest first) and the rule for the last step.

    final "zero": the grid ends at the last training step; the step to sigma = 0 after it is the x0
    prediction there, one counted evaluation the harness adds (launch.run). "sigma_min": the grid goes on
    to t_end (default 1/N = alphas_cumprod[0]).
    """
    t = (np.asarray(n, dtype=np.float64) + 1.0) / noise.num_train_timesteps
    if check_choice(f"{what} final", final, ("zero", "sigma_min")) == "zero":
        return t
    if t[-1] <= t_end:
        raise NfebenchError(f"{what} gives training steps {np.asarray(n).tolist()}, which must lie above t_end={t_end:g}")
    return np.append(t, t_end)


@register_grid("ddim_uniform")
def ddim_uniform(noise, steps, t_start, t_end, final: str = "zero"):
    """DDIM's reference code, skip_type "uniform": n = 0, k, 2k, ... with k = N // S, walked from the top.

    S = steps + 1 evaluations (final "zero": DDIM's last step goes to alpha_bar = 1, the x0 prediction).
    """
    n_train = _discrete_steps(noise, "ddim_uniform")
    S = steps + 1 if final == "zero" else steps
    n = np.arange(0, n_train, n_train // S)[::-1]
    if len(n) != S:
        raise NfebenchError(f"ddim_uniform: DDIM's skip {n_train} // {S} = {n_train // S} gives {len(n)} evaluations, "
                            f"not {S}; choose a number of evaluations that divides {n_train}")
    return _final_points(noise, n, final, t_end, "ddim_uniform")


@register_grid("ddim_quadratic")
def ddim_quadratic(noise, steps, t_start, t_end, final: str = "zero"):
    """DDIM's reference code, skip_type "quad": n = int(v^2), v uniform on [0, sqrt(0.8 N)], S = steps + 1 points.

    For S >= ~40 its first points repeat (int(v^2) = 0 twice); DDIM's code then spends an evaluation
    on a zero-length step that leaves x unchanged. Here repeats are merged, so counted NFE is lower
    than the requested budget and the record says so.
    """
    n_train = _discrete_steps(noise, "ddim_quadratic")
    S = steps + 1 if final == "zero" else steps
    n = np.unique((np.linspace(0, np.sqrt(n_train * 0.8), S) ** 2).astype(np.int64))[::-1]
    return _final_points(noise, n, final, t_end, "ddim_quadratic")


def _dpm_family(n_train, N, spacing, offset):
    # DPMSolverMultistep, UniPC and DEIS: N + 1 points, the last (step 0) dropped
    if spacing == "linspace":
        return np.linspace(0, n_train - 1, N + 1).round()[::-1][:-1]
    if spacing == "leading":
        return (np.arange(N + 1) * (n_train // (N + 1)))[::-1][:-1] + offset
    return np.round(n_train - np.arange(N) * (n_train / N)) - 1


def _euler_family(n_train, N, spacing, offset):
    # EulerDiscrete and HeunDiscrete: linspace is not rounded (fractional steps; float32 as diffusers)
    if spacing == "linspace":
        return np.linspace(0, n_train - 1, N, dtype=np.float32)[::-1].astype(np.float64)
    if spacing == "leading":
        return _leading(n_train, N) + offset
    return _trailing(n_train, N)


def _ddim_family(n_train, N, spacing, offset):
    # DDIM, DDPM, PNDM: steps_offset applies to every spacing's result
    return SPACINGS[spacing](n_train, N) + (offset if spacing == "leading" else 0)


def _pndm_family(n_train, N, spacing, offset):
    # PNDMScheduler in PRK mode: its pseudo Runge-Kutta warm-up takes the last 4 of the N timesteps
    if N < 4:
        raise NfebenchError(f"diffusers' PNDMScheduler needs at least 4 timesteps (its PRK warm-up takes 4); got {N} timesteps: "
                            "with zero_step that is nfe >= 13 (num_inference_steps + 9 model calls)")
    return _ddim_family(n_train, N, spacing, offset)


DIFFUSERS_FAMILIES = {"dpmsolver": _dpm_family, "euler": _euler_family, "ddim": _ddim_family, "pndm": _pndm_family}


@register_grid("diffusers")
def diffusers_grid(noise, steps, t_start, t_end, family: str = "dpmsolver", spacing: str = "linspace",
                   steps_offset: int = 0, final: str = "zero"):
    """The timesteps of a diffusers scheduler's set_timesteps, by scheduler family.

    dpmsolver: DPMSolverMultistep, UniPC, DEIS; euler: EulerDiscrete, HeunDiscrete; ddim: DDIM, DDPM;
    pndm: PNDM (ddim's spacing, at least 4 timesteps). final "zero" (diffusers' final_sigmas_type="zero",
    DDIM's set_alpha_to_one): the grid has diffusers' N = steps + 1 timesteps and the harness adds the x0
    prediction at the last; "sigma_min": N = steps timesteps, then t_end; "last": N = steps + 1
    timesteps, the grid ends at the last (PNDM's, training step 0 = alphas_cumprod[0]: diffusers' step
    from there has zero length, see the pndm solver's zero_step).
    """
    n_train = _discrete_steps(noise, "the diffusers grid")
    family_steps = DIFFUSERS_FAMILIES[check_choice("diffusers scheduler family", family, DIFFUSERS_FAMILIES)]
    check_choice("timestep spacing", spacing, SPACINGS)
    check_choice("diffusers grid final", final, ("zero", "sigma_min", "last"))
    N = steps if final == "sigma_min" else steps + 1
    n = family_steps(n_train, N, spacing, int(steps_offset))
    if final == "last":
        return (np.asarray(n, dtype=np.float64) + 1.0) / n_train
    return _final_points(noise, n, final, t_end, f"the diffusers '{family}' grid ({spacing}, steps_offset={steps_offset})")


def final_step(grid_opts) -> bool:
    """True when a grid's last step goes to sigma = 0, taken as the x0 prediction (one more NFE)."""
    return grid_opts.get("name") in ("ddim_uniform", "ddim_quadratic", "diffusers") and \
        grid_opts.get("final", "zero") == "zero"


def _pin_ends(t, t_start, t_end):
    # Round-tripping through lambda moves the ends by ~1e-16; keep them exact so grids compare equal.
    t = np.array(t, dtype=np.float64)
    t[0], t[-1] = t_start, t_end
    return t


def make_grid(noise, steps: int, name: str, t_end: float | None = None, t_start: float | None = None,
              **params) -> np.ndarray:
    """t_start: the noise schedule's T unless given (teleportation restarts a grid from its hand-over time)."""
    grid = GRIDS.get(name)
    t_end = noise.eps if t_end is None else float(t_end)
    t = grid(noise, steps, float(noise.T) if t_start is None else float(t_start), t_end, **params)
    if t.ndim != 1 or len(t) < 2 or not np.all(np.isfinite(t)):
        raise NfebenchError(f"time-step schedule '{name}' needs at least 2 finite time points")
    if not np.all(np.diff(t) < 0):
        raise NfebenchError(f"time-step schedule '{name}' must be strictly decreasing in t; got {t.tolist()}")
    if t[0] > noise.T * (1 + 1e-12) or t[-1] <= 0:
        raise NfebenchError(f"time-step schedule '{name}' must lie in (0, {noise.T}]; got [{t[-1]}, {t[0]}]")
    return t
