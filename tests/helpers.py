"""Small shared builders for the tests."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from models.counter import CountedDenoiser
from models.registry import build_model
from sampling.registry import get_solver
from sampling.seeds import SampleNoise
from sampling.timesteps import make_grid


def gaussian(shape=(1, 4, 4), noise=None, **kw):
    return build_model({"family": "gaussian", "shape": list(shape),
                        "noise_schedule": noise or {"type": "vp_linear"}, **kw})


def solve(model, solver, steps, grid="logsnr", n=8, seed=0, budget=None, grid_opts=None, **opts):
    """Run one solver on n samples; returns (samples, x_start, ts, counter)."""
    spec = get_solver(solver)
    ts = make_grid(model.noise, steps, grid, **(grid_opts or {}))
    rng = SampleNoise(seed, range(n), model.shape)
    x_start = float(model.noise.sigma(ts[0])) * rng.draw()
    counter = CountedDenoiser(model, budget)
    x = spec.fn(counter, x_start, ts, model.noise, rng, **opts)
    return x, x_start, ts, counter


def ode_error(model, solver, steps, **kw) -> float:
    x, x_start, ts, _ = solve(model, solver, steps, **kw)
    ref = model.ode_solution(x_start, float(ts[0]), float(ts[-1]))
    return float((x - ref).pow(2).mean().sqrt())


def fitted_order(model, solver, nfes, cost=lambda n: n, **kw) -> float:
    """Slope of -log(error) against log(NFE): the empirical convergence order."""
    steps = [n for n in nfes]
    errs = [ode_error(model, solver, s, **kw) for s in steps]
    slope = np.polyfit(np.log([cost(s) for s in steps]), np.log(errs), 1)[0]
    return -float(slope)



class ImageSet(torch.utils.data.Dataset):
    """A tensor of images as the Dataset torch-fidelity's calculate_metrics takes."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


REPO = Path(__file__).resolve().parents[1]


def launch(*args, cwd=REPO, env=None, timeout=300):
    """`python launch.py *args` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)
