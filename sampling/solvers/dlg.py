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

chains: per_sample (default) runs one chain per sample, started from the sample's prior draw and driven by its own
noise stream: consecutive samples are independent and every sample pays the burn-in; NFE per sample = burn_in +
mcmc_steps + the ODE solver's cost + 1. chains: persistent keeps `num_chains` chains across batches, as the
reference does: sample i is what chain i mod C yields in its round i // C (the window of mcmc_steps sweeps after
burn_in + round * mcmc_steps), so samples i and i + C are correlated, and the burn-in is paid once per chain as
run-level set-up (CountedDenoiser.on_setup), apart from the per-sample NFE = mcmc_steps + ODE + 1. Chain j starts
from sample j's prior draw and continues sample j's noise stream; a batch or shard that needs a chain's later round
first replays its earlier sweeps (counted as set-up), so samples depend on (seed, i, num_chains) only, and with
C >= the number of samples the persistent mode is the per-sample mode. Samples sit at their own levels, so the
model is called level by level on the rows there (CountedDenoiser.on_rows): one NFE is one evaluation of every
sample.
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
from ..seeds import draw_rows, sample_seeds
from .grid import per_run

POSTERIORS = ("argmax", "sample")
CHAINS = ("per_sample", "persistent")
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


def _check(burn_in, mcmc_steps, step_size, levels, posterior, chains="per_sample", num_chains=64):
    """The NFE each output sample is charged: the burn-in only when every sample runs its own chain."""
    check_choice("dlg posterior", posterior, POSTERIORS)
    check_choice("dlg chains", chains, CHAINS)
    if min(burn_in, mcmc_steps) < 0 or levels < 1 or not step_size > 0 or int(num_chains) < 1:
        raise NfebenchError(f"dlg needs burn_in >= 0, mcmc_steps >= 0, levels >= 1, step_size > 0 and num_chains >= 1; "
                            f"got {burn_in}, {mcmc_steps}, {levels}, {step_size}, {num_chains}")
    return (burn_in if chains == "per_sample" else 0) + mcmc_steps + 1  # + the final Tweedie step


def _split(extra):
    """The chain options in ``extra`` apart from the ODE solver's ode_<name> options."""
    chain = {k: extra[k] for k in ("chains", "num_chains") if k in extra}
    return chain, {k: v for k, v in extra.items() if k not in chain}


def _steps(nfe, ode="dpmpp", burn_in=20, mcmc_steps=10, step_size=0.3, levels=16, posterior="argmax",
           sigma_min=None, sigma_max=None, **extra):
    chain, extra = _split(extra)
    spec, opts = _ode(ode, extra)
    return spec.steps(max(nfe - _check(burn_in, mcmc_steps, step_size, levels, posterior, **chain), 0), **opts)


def _cost(steps, ode="dpmpp", burn_in=20, mcmc_steps=10, step_size=0.3, levels=16, posterior="argmax",
          sigma_min=None, sigma_max=None, **extra):
    chain, extra = _split(extra)
    spec, opts = _ode(ode, extra)
    return _check(burn_in, mcmc_steps, step_size, levels, posterior, **chain) + spec.cost(steps, **opts)


def _describe(steps, ode="dpmpp", burn_in=20, mcmc_steps=10, chains="per_sample", num_chains=64, **extra):
    spec, opts = _ode(ode, {k: v for k, v in extra.items() if k.startswith(ODE_PREFIX)})
    ode_nfe = spec.cost(steps, **opts)
    after = mcmc_steps + ode_nfe + 1
    if chains == "per_sample":
        how = ("one Langevin-Gibbs chain per sample, started from its prior draw and driven by its own noise "
               "stream: samples depend only on (seed, i); consecutive samples are independent")
        per_sample, burn = burn_in + after, {"nfe_burn_in": burn_in}  # per sample: every chain burns in
    else:
        c = int(num_chains)
        how = (f"{c} persistent Langevin-Gibbs chains kept across batches: sample i is chain i mod {c}'s round "
               f"i // {c} (the window of mcmc_steps sweeps after burn_in + round * mcmc_steps), so samples i and "
               f"i + {c} are correlated (the same chain, mcmc_steps sweeps apart); chain j starts from sample j's "
               "prior draw and continues its noise stream, and a batch or shard needing a later round replays the "
               f"chain's earlier sweeps, so samples depend on (seed, i, num_chains={c}) only")
        # the burn-in is run-level set-up, paid once per chain: the record's nfe.setup counts it (and replays)
        per_sample, burn = after, {"nfe_burn_in_per_chain": burn_in, "num_chains": c}
    return {
        "ode": {"solver": spec.name, "options": opts, "steps": steps, "nfe": ode_nfe,
                **(spec.describe(steps, **opts) if spec.describe else {})},
        "chains": how,
        **burn,
        "nfe_chain": mcmc_steps,
        "nfe_ode": ode_nfe,
        "nfe_final": 1,
        "nfe_per_sample": per_sample,
        # the reference's count: chains kept across batches amortise the burn-in away, so each batch costs
        # mcmc_steps + the integrator's NFE + Tweedie's 1
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


def gibbs_sweep(model, x, level, lv: Levels, step_size: float, posterior: str, rng, logits, batch=None):
    """One chain step of every row: the Langevin x-update at each row's level, then the level from p(s | x).
    batch: the samples one NFE evaluates (these rows may be some of them); the rows themselves by default."""
    n, d = x.shape[0], torch.empty_like(x)
    for k, rows in _by_level(level):
        d[rows] = model.on_rows(lv.alpha[k] * x[rows], lv.t[k], rows, batch or n)
    s2 = torch.as_tensor(lv.s ** 2, dtype=x.dtype, device=x.device)[level].reshape(-1, *[1] * (x.dim() - 1))
    x = x + (step_size / 2) * (d - x) / s2 + math.sqrt(step_size) * rng.like(x)
    lp = logits(x, lv.s)
    if posterior == "argmax":
        return x, lp.argmax(1)
    # inverse CDF at u = Phi(z), z the first entry of one more of the sample's own normal draws
    u = 0.5 * torch.erfc(-rng.like(x).reshape(n, -1)[:, :1] / math.sqrt(2.0))
    cdf = torch.softmax(lp, 1).cumsum(1)
    return x, (cdf < u).sum(1).clamp(max=len(lv.t) - 1)


@dataclass
class _Sweeps:
    """What every chain step needs besides the chain's state."""
    lv: Levels
    step_size: float
    posterior: str
    logits: object
    alpha: torch.Tensor  # each level's alpha, shaped to broadcast over rows


def window(model, xe, level, xt, steps: int, sw: _Sweeps, rng, batch=None):
    """`steps` sweeps from the chain state (xe, level, xt = its x at its level). Returns the new state and the
    lowest level seen with that state's x (the starting state counts; ties keep the earliest)."""
    best, start = level, xt
    for _ in range(steps):
        xe, level = gibbs_sweep(model, xe, level, sw.lv, sw.step_size, sw.posterior, rng, sw.logits, batch)
        lower = (level > best).reshape(-1, *[1] * (xe.dim() - 1))  # strictly lower noise
        start = torch.where(lower, sw.alpha[level] * xe, start)
        best = torch.maximum(best, level)
    return xe, level, (sw.alpha[level] * xe if steps else xt), best, start


def chain_start(x, ts, noise, lv: Levels):
    """(x_e, x) of chains started at the top level from prior draws x = sigma(t0) z: x_e = s_top z, and x itself
    when the top level is the grid's first time (so that 0 steps hand the ODE exactly the prior draw)."""
    a0, s0 = float(noise.alpha(ts[0])), float(noise.edm_sigma(ts[0]))
    xe = x / a0 * (lv.s[0] / s0)
    return xe, (x if lv.t[0] == ts[0] else lv.alpha[0] * xe)


class _Setup:
    """The counter as chain set-up sees it: every call is run-level state (CountedDenoiser.on_setup)."""

    def __init__(self, counter):
        self.counter = counter

    def on_rows(self, x, t, rows, batch):
        return self.counter.on_setup(x, t)


class _Streams:
    """Draws from some chains' own generators (sample j's stream for chain j)."""

    def __init__(self, gens, shape):
        self.gens, self.shape = gens, shape

    def like(self, x):
        return draw_rows(self.gens, self.shape, x.dtype, x.device)


class ChainPool:
    """Persistent chains: each chain's state at the start of its next round, kept across a run's batches.

    Chain j starts from sample j's prior draw and continues sample j's generator. Round r of a chain begins after
    burn_in + r * mcmc_steps sweeps; a chain asked for a round it has passed (a replayed batch) starts again, so
    a round's output never depends on which batches came before."""

    def __init__(self, seed: int, shape, dtype, device, num_chains: int):
        self.seed, self.shape, self.num_chains = int(seed), tuple(shape), int(num_chains)
        self.dtype, self.device = dtype, torch.device(device)
        self.gens, self.xe, self.xt, self.level, self.sweeps = {}, {}, {}, {}, {}

    def _restart(self, j: int, ts, noise, lv):
        self.gens[j] = torch.Generator().manual_seed(sample_seeds(self.seed, [j])[0])
        x = float(noise.sigma(ts[0])) * draw_rows([self.gens[j]], self.shape, self.dtype, self.device)
        xe, xt = chain_start(x, ts, noise, lv)
        self.xe[j], self.xt[j] = xe[0], xt[0]
        self.level[j], self.sweeps[j] = torch.zeros((), dtype=torch.long, device=self.device), 0

    def _state(self, ids):
        return tuple(torch.stack([d[j] for j in ids]) for d in (self.xe, self.level, self.xt))

    def _store(self, ids, xe, level, xt, steps: int):
        for k, j in enumerate(ids):
            self.xe[j], self.level[j], self.xt[j] = xe[k], level[k], xt[k]
            self.sweeps[j] += steps

    def round(self, counter, ids: list, r: int, burn_in: int, mcmc_steps: int, sw: _Sweeps, ts, noise, batch: int):
        """(lowest level, its x) of chains ``ids`` in their round r; the catch-up to the round is set-up, the
        round's own sweeps are charged to ``counter`` as rows of a batch of ``batch`` samples."""
        due = burn_in + r * mcmc_steps
        for j in ids:
            if j not in self.sweeps or self.sweeps[j] > due:
                self._restart(j, ts, noise, sw.lv)
        while True:  # chains behind the round catch up together, one sweep at a time
            behind = [j for j in ids if self.sweeps[j] < due]
            if not behind:
                break
            xe, level, xt = self._state(behind)
            xe, level, xt, _, _ = window(_Setup(counter), xe, level, xt, 1, sw, _Streams([self.gens[j] for j in behind],
                                                                                         self.shape))
            self._store(behind, xe, level, xt, 1)
        xe, level, xt = self._state(ids)
        xe, level, xt, best, start = window(counter, xe, level, xt, mcmc_steps, sw,
                                            _Streams([self.gens[j] for j in ids], self.shape), batch)
        self._store(ids, xe, level, xt, mcmc_steps)
        return best, start


def _run_state(seed, shape, dtype, device, chains="per_sample", num_chains=64, **_):
    if check_choice("dlg chains", chains, CHAINS) == "per_sample":
        return None
    return ChainPool(seed, shape, dtype, device, num_chains)


def _setup_cost(first, n, burn_in=20, mcmc_steps=10, chains="per_sample", num_chains=64, **_):
    """Each chain a run uses is brought to the round of its first sample there: burn_in + round * mcmc_steps."""
    if check_choice("dlg chains", chains, CHAINS) == "per_sample":
        return 0
    c, first = int(num_chains), int(first)
    return sum(burn_in + (i // c) * mcmc_steps for i in range(first, first + min(c, int(n))))


@register_solver("dlg", steps=_steps, cost=_cost, describe=_describe, stochastic=True,
                 model_needs=("noise_level_logits",), run_state=_run_state, setup_cost=_setup_cost)
def sample_dlg(model, x, ts, noise, rng, ode="dpmpp", burn_in: int = 20, mcmc_steps: int = 10,
               step_size: float = 0.3, levels: int = 16, posterior="argmax", sigma_min=None, sigma_max=None,
               chains="per_sample", num_chains: int = 64, run_state=None, **extra):
    _check(burn_in, mcmc_steps, step_size, levels, posterior, chains, num_chains)
    spec, opts = _ode(ode, extra)
    lv = _levels(noise, ts, int(levels), sigma_min, sigma_max)
    alpha = torch.as_tensor(lv.alpha, dtype=x.dtype, device=x.device).reshape(-1, *[1] * (x.dim() - 1))
    sw = _Sweeps(lv, step_size, posterior, posterior_logits(model), alpha)
    batch = x.shape[0]
    if chains == "per_sample":
        xe, xt = chain_start(x, ts, noise, lv)
        level = torch.zeros(batch, dtype=torch.long, device=x.device)
        xe, level, xt, _, _ = window(model, xe, level, xt, burn_in, sw, rng)
        best, start = window(model, xe, level, xt, mcmc_steps, sw, rng)[3:]
    else:
        if getattr(model, "cond", None) is not None:
            raise NfebenchError("dlg's persistent chains need an unconditional model")
        # a call outside a run (no run_state) keeps its chains for this call only
        pool = run_state or ChainPool(rng.seed, x.shape[1:], x.dtype, x.device, num_chains)
        best = torch.empty(batch, dtype=torch.long, device=x.device)
        start = torch.empty_like(x)
        rounds = [i // pool.num_chains for i in rng.indices]
        for r in sorted(set(rounds)):  # a chain in the batch twice (batch > num_chains) yields its rounds in order
            rows = [k for k, rk in enumerate(rounds) if rk == r]
            b, st = pool.round(model, [rng.indices[k] % pool.num_chains for k in rows], r, burn_in, mcmc_steps, sw,
                               ts, noise, batch)
            best[rows], start[rows] = b, st
    out = torch.empty_like(x)
    for k, rows in _by_level(best):
        grid = anchored_grid(noise, np.asarray(ts, dtype=np.float64), lv.t[k])
        out[rows] = spec.fn(_Rows(model, rows, batch), start[rows], grid, noise, None, **opts)
    return model(out, float(ts[-1]))  # Tweedie: the x0 prediction at the last level
