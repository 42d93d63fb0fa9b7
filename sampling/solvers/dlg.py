"""Denoising Langevin Gibbs (DLG; Kim & Ye 2022, "Denoising MCMC"): MCMC near the data, then a short ODE solve.

A chain lives on pairs (x, s): an EDM-coordinate state x = x_t / alpha_t and a noise level s from a geometric grid
of `levels` levels from sigma_max down towards the run's t_end. One chain step is a Gibbs sweep:

    x <- x + (eta/2) grad log p_s(x) + sqrt(eta) z,   grad log p_s(x) = (D(x; s) - x) / s^2     (one NFE)
    s <- argmax_k p(s_k | x)   (posterior: argmax, the reference's)   or   s ~ p(s_k | x)   (posterior: sample)

p(s_k | x), with a uniform prior on the levels, comes from the model's ``noise_level_logits(x, sigmas)``: exact on
the analytic models; the reference trains a noise-level classifier for it (not a score call, not an NFE). After
`burn_in` steps the chain runs `mcmc_steps` more; its state of lowest s (the burn-in's last state included, ties
keep the earliest) goes to the `ode` solver on the run's grid re-anchored at that level, and one evaluation at
t_end returns Tweedie's denoised x.

One chain per sample, started from the sample's prior draw and driven by its own noise stream: a sample depends
only on (seed, i) and consecutive samples are independent. (The reference keeps its chains across batches, which
amortises the burn-in but correlates consecutive samples; nfebench does not.) Samples sit at their own levels, so
the model is called level by level on the rows there (CountedDenoiser.on_rows): one NFE is one evaluation of
every sample. NFE per sample = burn_in + mcmc_steps + the ODE solver's cost + 1.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch

from common.errors import NfebenchError
from common.registry import check_choice
from ..registry import get_solver, register_solver
from .grid import per_run

POSTERIORS = ("argmax", "sample")
ODE_PREFIX = "ode_"  # dlg option ode_<name> is the ODE solver's option <name>


@dataclass(frozen=True)
class Levels:
    t: list      # model time of each level, highest noise first
    alpha: list
    s: np.ndarray  # EDM sigma of each level


@per_run
def _levels(noise, ts, levels, sigma_min, sigma_max) -> Levels:
    """The chain's noise levels: geometric from sigma_max (null: the grid's top, whose time is ts[0] exactly) to
    sigma_min (null: one grid ratio above the run's final level, so every level leaves an ODE to solve)."""
    top, end = float(noise.edm_sigma(ts[0])), float(noise.edm_sigma(ts[-1]))
    hi = top if sigma_max is None else float(sigma_max)
    lo = hi * (end / hi) ** (levels / (levels + 1)) if sigma_min is None else float(sigma_min)
    if not end < lo <= hi <= top * (1 + 1e-9) or (levels > 1 and lo == hi):
        raise NfebenchError(f"dlg needs {end:.6g} (the run's final level) < sigma_min < sigma_max <= {top:.6g} "
                            f"(the grid's top); got sigma_min={lo:.6g}, sigma_max={hi:.6g}")
    s = np.geomspace(hi, lo, levels)
    t = noise.t_of_edm_sigma(s)
    if sigma_max is None:
        t[0] = ts[0]
    return Levels([float(v) for v in t], [float(v) for v in noise.alpha(t)], s)


def anchored_grid(noise, ts, t_start: float) -> np.ndarray:
    """The run's grid moved to start at t_start: the same fractions of the log-SNR range (the logsnr grid from
    t_start when the run's grid is logsnr); the run's own grid when t_start is its top."""
    if t_start == ts[0]:
        return ts
    lam = noise.lam(ts)
    lam_k = float(noise.lam(t_start))
    t = np.array(noise.t_of_lam(lam_k + (lam - lam[0]) / (lam[-1] - lam[0]) * (lam[-1] - lam_k)), dtype=np.float64)
    t[0], t[-1] = t_start, ts[-1]
    return t


def _ode(ode, extra):
    """(spec, options) of the ODE solver that finishes each chain."""
    spec = get_solver(ode)
    if spec.name == "dlg" or spec.stochastic or spec.model_needs:
        raise NfebenchError(f"dlg's ode must be a deterministic solver of the probability-flow ODE; got '{spec.name}'")
    opts = {k[len(ODE_PREFIX):]: v for k, v in extra.items()}
    unknown = [k for k in extra if not k.startswith(ODE_PREFIX)]
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} (the ODE solver's options are written ode_<name>)")
    inspect.signature(spec.fn).bind(None, None, None, None, None, **opts)
    return spec, opts


def _check(burn_in, mcmc_steps, step_size, levels, posterior):
    check_choice("dlg posterior", posterior, POSTERIORS)
    if min(burn_in, mcmc_steps) < 0 or levels < 1 or not step_size > 0:
        raise NfebenchError(f"dlg needs burn_in >= 0, mcmc_steps >= 0, levels >= 1 and step_size > 0; got "
                            f"{burn_in}, {mcmc_steps}, {levels}, {step_size}")
    return burn_in + mcmc_steps + 1  # + the final Tweedie step


def _steps(nfe, ode="dpmpp", burn_in=20, mcmc_steps=10, step_size=0.3, levels=16, posterior="argmax",
           sigma_min=None, sigma_max=None, **extra):
    spec, opts = _ode(ode, extra)
    return spec.steps(max(nfe - _check(burn_in, mcmc_steps, step_size, levels, posterior), 0), **opts)


def _cost(steps, ode="dpmpp", burn_in=20, mcmc_steps=10, step_size=0.3, levels=16, posterior="argmax",
          sigma_min=None, sigma_max=None, **extra):
    spec, opts = _ode(ode, extra)
    return _check(burn_in, mcmc_steps, step_size, levels, posterior) + spec.cost(steps, **opts)


def _describe(steps, ode="dpmpp", burn_in=20, mcmc_steps=10, **extra):
    spec, opts = _ode(ode, {k: v for k, v in extra.items() if k.startswith(ODE_PREFIX)})
    ode_nfe = spec.cost(steps, **opts)
    after = mcmc_steps + ode_nfe + 1
    return {
        "ode": {"solver": spec.name, "options": opts, "steps": steps, "nfe": ode_nfe,
                **(spec.describe(steps, **opts) if spec.describe else {})},
        "chains": "one Langevin-Gibbs chain per sample, started from its prior draw and driven by its own noise "
                  "stream: samples depend only on (seed, i); consecutive samples are independent",
        "nfe_burn_in": burn_in,  # per sample: every chain burns in
        "nfe_chain": mcmc_steps,
        "nfe_ode": ode_nfe,
        "nfe_final": 1,
        "nfe_per_sample": burn_in + after,
        # the reference's count: chains kept across batches amortise the burn-in away, so each batch costs
        # mcmc_steps + the integrator's NFE + Tweedie's 1; nfebench counts the burn-in of every chain
        "paper_nfe_approx": after,
        "noise_level_posterior": "model.noise_level_logits (exact on analytic models; not an NFE)",
    }


class _Rows:
    """The counter as the ODE solver of one group of rows sees it: each call is charged as those rows' share."""

    def __init__(self, counter, rows, batch):
        self.counter, self.rows, self.batch = counter, rows, batch

    def __getattr__(self, name):
        return getattr(self.counter, name)

    def __call__(self, x, t, cond=None):
        return self.counter.on_rows(x, t, self.rows, self.batch)


def _by_level(level: torch.Tensor):
    # the model takes one noise level per call, so the host must know which levels hold rows (one sync per sweep)
    for k in torch.unique(level).tolist():
        yield k, (level == k).nonzero().squeeze(1)


def posterior_logits(model):
    logits = getattr(model, "noise_level_logits", None)
    if logits is None:
        name = type(getattr(model, "model", model)).__name__
        raise NfebenchError(f"solver 'dlg' needs a noise-level posterior: model {name} "
                            "has no noise_level_logits(x, sigmas) (gaussian and digits have the exact one; a neural "
                            "model needs a trained noise-level classifier attached as that method)")
    return logits


def gibbs_sweep(model, x, level, lv: Levels, step_size: float, posterior: str, rng, logits):
    """One chain step of every row: the Langevin x-update at each row's level, then the level from p(s | x)."""
    batch, d = x.shape[0], torch.empty_like(x)
    for k, rows in _by_level(level):
        d[rows] = model.on_rows(lv.alpha[k] * x[rows], lv.t[k], rows, batch)
    s2 = torch.as_tensor(lv.s ** 2, dtype=x.dtype, device=x.device)[level].reshape(-1, *[1] * (x.dim() - 1))
    x = x + (step_size / 2) * (d - x) / s2 + math.sqrt(step_size) * rng.like(x)
    lp = logits(x, lv.s)
    if posterior == "argmax":
        return x, lp.argmax(1)
    # inverse CDF at u = Phi(z), z the first entry of one more of the sample's own normal draws
    u = 0.5 * torch.erfc(-rng.like(x).reshape(batch, -1)[:, :1] / math.sqrt(2.0))
    cdf = torch.softmax(lp, 1).cumsum(1)
    return x, (cdf < u).sum(1).clamp(max=len(lv.t) - 1)


@register_solver("dlg", steps=_steps, cost=_cost, describe=_describe, stochastic=True,
                 model_needs=("noise_level_logits",))
def sample_dlg(model, x, ts, noise, rng, ode="dpmpp", burn_in: int = 20, mcmc_steps: int = 10,
               step_size: float = 0.3, levels: int = 16, posterior="argmax", sigma_min=None, sigma_max=None, **extra):
    _check(burn_in, mcmc_steps, step_size, levels, posterior)
    spec, opts = _ode(ode, extra)
    logits = posterior_logits(model)
    lv = _levels(noise, ts, int(levels), sigma_min, sigma_max)
    batch = x.shape[0]
    # the chain starts at the top level from the sample's prior draw x = sigma(t0) z: x_e = s_top z
    a0, s0 = float(noise.alpha(ts[0])), float(noise.edm_sigma(ts[0]))
    xe = x / a0 * (lv.s[0] / s0)
    level = torch.zeros(batch, dtype=torch.long, device=x.device)
    start = x if lv.t[0] == ts[0] else lv.alpha[0] * xe  # what goes to the ODE if no step is taken
    alpha = torch.as_tensor(lv.alpha, dtype=x.dtype, device=x.device).reshape(-1, *[1] * (x.dim() - 1))
    for _ in range(burn_in):
        xe, level = gibbs_sweep(model, xe, level, lv, step_size, posterior, rng, logits)
    best, start = level, (alpha[level] * xe if burn_in else start)
    for _ in range(mcmc_steps):
        xe, level = gibbs_sweep(model, xe, level, lv, step_size, posterior, rng, logits)
        lower = (level > best).reshape(-1, *[1] * (x.dim() - 1))  # strictly lower noise: ties keep the earliest
        start = torch.where(lower, alpha[level] * xe, start)
        best = torch.maximum(best, level)
    out = torch.empty_like(x)
    for k, rows in _by_level(best):
        grid = anchored_grid(noise, np.asarray(ts, dtype=np.float64), lv.t[k])
        out[rows] = spec.fn(_Rows(model, rows, batch), start[rows], grid, noise, None, **opts)
    return model(out, float(ts[-1]))  # Tweedie: the x0 prediction at the last level
