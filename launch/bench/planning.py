"""A solver config as a run plans and calls it, on a near-free model: what the bench times and checks.

run_solver mirrors launch/run.py's per-batch call (the solver and its final x0 step, every model call
through the NFE counter); the bench gives it its own inputs so that noise set-up is timed apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from common.paths import REPO
from models.counter import CountedDenoiser
from models.denoiser import Denoiser
from sampling.registry import get_solver
from sampling.schedules import make_noise_schedule
from sampling.seeds import SampleNoise
from sampling.timesteps import final_step, make_grid

NFE = 10  # the bench's budget: the measurements and the loop part's run use 10


def solver_names() -> list[str]:
    """Every solver config the near-free model can run: not those needing a model method it lacks (dlg's
    noise-level posterior, declared as model_needs)."""
    names = sorted(p.stem for p in (REPO / "configs" / "solver").glob("*.yaml"))
    return [n for n in names if not get_solver(n).model_needs]


def compose(overrides: list[str]) -> dict:
    """The resolved run config, as `python launch.py <overrides>` would see it."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)


class NearFree(Denoiser):
    """A model that costs one elementwise op: nfebench's wrapping of it is all that is left to time."""

    def __init__(self, noise, shape, prediction="x0", fn=None):
        self.noise, self.shape, self.prediction = noise, tuple(shape), prediction
        self.fn = fn or (lambda x, t: x * 0.5)

    def predict(self, x, t, cond=None):
        return self.fn(x, t)

    def sample_data(self, n: int, generator: torch.Generator) -> torch.Tensor:
        # the data calibrations sample (DPM-Solver-v3's EMS): any fixed law serves a bench of the solver loop
        return torch.randn(n, *self.shape, dtype=torch.float64, generator=generator)


@dataclass
class Case:
    """One solver config planned for one model: what run_solver needs."""
    label: str
    spec: object
    opts: dict
    ts: np.ndarray
    final: bool
    nfe: int
    calibration: dict = field(default_factory=dict)  # (model, dtype) -> the solver's calibration keyword

    @classmethod
    def plan(cls, label: str, cfg: dict, noise, nfe: int) -> "Case":
        opts = dict(cfg["solver"])
        spec = get_solver(opts.pop("name"))
        grid = dict(cfg["schedule"])
        final = bool(cfg.get("denoise_to_zero") or final_step(grid))
        grid_name = grid.pop("name")
        steps = spec.steps(nfe - int(final), **opts)
        return cls(label, spec, opts, make_grid(noise, steps, grid_name, **grid), final, nfe)


def calibrated(case: Case, model, dtype) -> dict:
    """A calibrated solver's arrays on this model (computed once per case, model and dtype, untimed), as the
    calibration stage would hand them over; {} for the others."""
    if not case.spec.calibration:
        return {}
    key = (id(model), dtype)
    if key not in case.calibration:
        need = case.spec.calibration(case.ts, model.noise, dtype, **case.opts)
        arrays = need.compute(CountedDenoiser(model, None), torch.device("cpu")) if need else None
        case.calibration[key] = {"calibration": arrays and {k: np.asarray(v) for k, v in arrays.items()}}
    return case.calibration[key]


def run_solver(case: Case, model, x_start, rng):
    """One batch as launch/run.py samples it: the solver and its final x0 step, every call counted."""
    extra = calibrated(case, model, x_start.dtype)
    counter = CountedDenoiser(model, budget=case.nfe, cond=None)
    with torch.no_grad():
        x = case.spec.fn(counter, x_start, case.ts, model.noise, rng, **case.opts, **extra)
        if case.final:
            t = float(case.ts[-1])
            x = case.spec.final(counter, x, t, **case.opts) if case.spec.final else counter(x, t)
    return x, counter


def noise_schedule():
    # digits_unet's: DDPM's linear betas over 1000 steps, the schedule diffusers' schedulers default to
    return make_noise_schedule(**dict(compose(["model=digits_unet"])["model"]["noise_schedule"]))


def is_stochastic(case: Case, model) -> bool:
    """Whether this config draws per-step noise (ddim/euler/heun do only when asked): an untimed probe,
    the same inputs with two different noise streams."""
    x = torch.randn(2, *model.shape, generator=torch.Generator().manual_seed(0))
    a, b = (run_solver(case, model, x.clone(), SampleNoise(seed, range(2), model.shape, dtype=x.dtype))[0]
            for seed in (0, 1))
    return not torch.equal(a, b)


class CountingNoise:
    """A SampleNoise that counts its full-batch Gaussian draws (for an untimed probe)."""

    def __init__(self, inner):
        self.inner, self.draws = inner, 0

    def draw(self):
        self.draws += 1
        return self.inner.draw()

    def like(self, x):
        self.draws += 1
        return self.inner.like(x)


def draws_per_batch(case: Case, model) -> int:
    """How many batch-sized Gaussian draws one batch of this config makes."""
    rng = CountingNoise(SampleNoise(0, range(2), model.shape))
    run_solver(case, model, torch.randn(2, *model.shape, dtype=torch.float64), rng)
    return rng.draws


def passes_per_batch(case: Case, model, x_start):
    """Full-batch passes (ops.PassCounter) of one batch of this config, draws hidden, and its NFE: an
    untimed probe on a copy of the timed inputs, after one uncounted run (calibration, caches) as the
    timed rounds follow a warm-up round."""
    from .ops import count_passes

    def noise():
        return SampleNoise(0, range(len(x_start)), model.shape, dtype=x_start.dtype)

    run_solver(case, model, x_start.clone(), noise())
    x, nfe = x_start.clone(), []
    counter = count_passes(lambda rng: nfe.append(run_solver(case, model, x, rng)[1].count), x.numel(), noise())
    return counter, nfe[0]
