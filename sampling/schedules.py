"""Noise schedules: x_t = alpha_t * x_0 + sigma_t * eps.

Every schedule exposes the same conversions, all in float64 numpy so that time grids and
solver coefficients are computed once on the host, before any sampling loop:

    alpha(t), sigma(t), lam(t) = log(alpha/sigma), edm_sigma(t) = sigma/alpha,
    t_of_lam(lam), t_of_edm_sigma(s)

``T`` is where sampling starts, ``eps`` the default end time.
"""
from __future__ import annotations

import math

import numpy as np

from common.errors import NfebenchError
from common.registry import Registry, check_choice

NOISE_SCHEDULES = Registry("noise schedule")


def register_noise(name):
    def wrap(cls):
        cls.name = name
        return NOISE_SCHEDULES.register(name, cls)

    return wrap


def make_noise_schedule(name: str, **params):
    """The schedule a model config's ``noise_schedule`` group names (``name``), with its options."""
    schedule = NOISE_SCHEDULES.get(name)
    try:
        return schedule(**params)
    except TypeError as e:
        raise NfebenchError(f"bad options for noise schedule '{name}': {e}") from None


class NoiseSchedule:
    name = "base"
    T: float
    eps: float

    def log_alpha(self, t):
        raise NotImplementedError

    def lam(self, t):
        raise NotImplementedError

    def t_of_lam(self, lam):
        raise NotImplementedError

    def alpha(self, t):
        return np.exp(self.log_alpha(t))

    def sigma(self, t):
        return self.alpha(t) * self.edm_sigma(t)

    def edm_sigma(self, t):
        return np.exp(-self.lam(t))

    def t_of_edm_sigma(self, s):
        return self.t_of_lam(-np.log(s))

    def model_time(self, t):
        """The time value a network trained on this schedule expects as input."""
        return t

    def describe(self) -> dict:
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


class _VP(NoiseSchedule):
    """Variance preserving: alpha^2 + sigma^2 = 1, so everything follows from log alpha."""

    def lam(self, t):
        la = self.log_alpha(t)
        return la - 0.5 * np.log(-np.expm1(2.0 * la))

    def sigma(self, t):
        return np.sqrt(-np.expm1(2.0 * self.log_alpha(t)))

    @staticmethod
    def _log_alpha_of_lam(lam):
        return -0.5 * np.logaddexp(0.0, -2.0 * np.asarray(lam, dtype=np.float64))


@register_noise("vp_linear")
class VPLinear(_VP):
    """Continuous VP SDE with linear beta(t) (Song et al. 2021)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, eps: float = 1e-3):
        self.beta_min, self.beta_max, self.T, self.eps = float(beta_min), float(beta_max), float(T), float(eps)

    def log_alpha(self, t):
        t = np.asarray(t, dtype=np.float64)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_of_lam(self, lam):
        # Solve 0.5*d*t^2 + b0*t = L with L = -2 log alpha; this root form avoids cancellation.
        L = -2.0 * self._log_alpha_of_lam(lam)
        d = self.beta_max - self.beta_min
        return 2.0 * L / (self.beta_min + np.sqrt(self.beta_min**2 + 2.0 * d * L))


@register_noise("vp_cosine")
class VPCosine(_VP):
    """Continuous cosine schedule (Nichol & Dhariwal); T < 1 keeps lambda_T finite."""

    def __init__(self, s: float = 0.008, T: float = 0.9946, eps: float = 1e-3):
        self.s, self.T, self.eps = float(s), float(T), float(eps)
        self._log_a0 = math.log(math.cos(math.pi / 2 * self.s / (1 + self.s)))

    def log_alpha(self, t):
        t = np.asarray(t, dtype=np.float64)
        return np.log(np.cos(math.pi / 2 * (t + self.s) / (1 + self.s))) - self._log_a0

    def t_of_lam(self, lam):
        la = self._log_alpha_of_lam(lam)
        return 2 * (1 + self.s) / math.pi * np.arccos(np.exp(la + self._log_a0)) - self.s


def _cosine_betas(n: int, beta_start: float, beta_end: float) -> np.ndarray:
    s = 0.008
    f = np.cos((np.arange(n + 1) / n + s) / (1 + s) * math.pi / 2) ** 2
    return np.clip(1 - f[1:] / f[:-1], 0, 0.999)


# diffusers' `beta_schedule` names: (number of steps, beta_start, beta_end) -> betas
BETAS = {"linear": lambda n, b0, b1: np.linspace(b0, b1, n, dtype=np.float64),
         "scaled_linear": lambda n, b0, b1: np.linspace(b0**0.5, b1**0.5, n, dtype=np.float64) ** 2,
         "cosine": _cosine_betas}


@register_noise("vp_discrete")
class VPDiscrete(_VP):
    """A DDPM-style model trained on N integer steps.

    As in the DPM-Solver paper, step n (0-based) sits at t = (n+1)/N and log alpha is
    interpolated piecewise-linearly in t, so continuous-time solvers apply unchanged; the
    network receives the fractional step index (t - 1/N) * N.
    """

    def __init__(self, betas: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02,
                 num_train_timesteps: int = 1000, T: float = 1.0, eps: float | None = None):
        self.betas, self.beta_start, self.beta_end = betas, float(beta_start), float(beta_end)
        self.num_train_timesteps = n = int(num_train_timesteps)
        beta = BETAS[check_choice("beta schedule", betas, BETAS)](n, self.beta_start, self.beta_end)
        self._log_alphas = 0.5 * np.cumsum(np.log1p(-beta))
        self._ts = np.arange(1, n + 1, dtype=np.float64) / n
        self.T = float(T)
        self.eps = float(eps) if eps is not None else 1.0 / n

    def log_alpha(self, t):
        return np.interp(np.asarray(t, dtype=np.float64), self._ts, self._log_alphas)

    def t_of_lam(self, lam):
        la = self._log_alpha_of_lam(lam)
        # log alpha decreases in t; np.interp needs increasing abscissae.
        return np.interp(la, self._log_alphas[::-1], self._ts[::-1])

    def model_time(self, t):
        return (t - 1.0 / self.num_train_timesteps) * self.num_train_timesteps

    def describe(self) -> dict:
        return {"name": self.name, "betas": self.betas, "beta_start": self.beta_start, "beta_end": self.beta_end,
                "num_train_timesteps": self.num_train_timesteps, "T": self.T, "eps": self.eps}


class _AlphaOne(NoiseSchedule):
    def log_alpha(self, t):
        return np.zeros_like(np.asarray(t, dtype=np.float64))

    def lam(self, t):
        return -np.log(self.sigma(t))


@register_noise("ve")
class VE(_AlphaOne):
    """Variance exploding SDE (Song et al. 2021): sigma(t) = smin * (smax/smin)^t."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, eps: float = 1e-5):
        self.sigma_min, self.sigma_max, self.T, self.eps = float(sigma_min), float(sigma_max), float(T), float(eps)

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** np.asarray(t, dtype=np.float64)

    def t_of_lam(self, lam):
        return np.log(np.exp(-np.asarray(lam, dtype=np.float64)) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


@register_noise("edm")
class EDM(_AlphaOne):
    """Karras et al. 2022: t is sigma itself."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.T, self.eps = self.sigma_max, self.sigma_min

    def sigma(self, t):
        return np.asarray(t, dtype=np.float64)

    def t_of_lam(self, lam):
        return np.exp(-np.asarray(lam, dtype=np.float64))
