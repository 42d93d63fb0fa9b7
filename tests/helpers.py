"""Small shared builders for the tests."""
from __future__ import annotations

import copy
import functools
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
                        "noise_schedule": noise or {"name": "vp_linear"}, **kw})


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
CONFIGS = REPO / "configs"


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(CONFIGS), version_base=None):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


def compose_cfg(*overrides) -> dict:
    """The resolved config Hydra composes for these overrides (a fresh copy; compositions are cached)."""
    return copy.deepcopy(_composed(overrides))


def solver_defaults(name: str):
    """A solver config's options and its recommended grid's options, as the config files state them."""
    from omegaconf import OmegaConf

    opts = OmegaConf.to_container(OmegaConf.load(CONFIGS / "solver" / f"{name}.yaml"))
    grid = "logsnr"
    for entry in opts.pop("defaults", []):
        for key, value in (entry.items() if isinstance(entry, dict) else []):
            if key.endswith("schedule@_global_.schedule"):
                grid = value
    return opts, OmegaConf.to_container(OmegaConf.load(CONFIGS / "schedule" / f"{grid}.yaml"))


def every_solver_runs(model_cfg: dict, model, sample_shape) -> None:
    """Every registered solver, with its defaults, samples a finite batch and spends exactly its NFE rule."""
    from launch.run import plan, sample_batches
    from sampling.registry import SOLVERS

    for solver in sorted(SOLVERS):
        opts, schedule = solver_defaults(solver)
        nfe = max(6, get_solver(solver).min_nfe(**{k: v for k, v in opts.items() if k != "name"}))
        cfg = {"nfe": nfe, "num_samples": 1, "batch_size": 1, "seed": 0, "sample_offset": 0, "t_end": None,
               "dtype": "float32", "model": model_cfg, "solver": dict(opts), "schedule": schedule}
        p, out = plan(cfg), []
        counted = sample_batches(cfg, p, model, torch.device("cpu"), lambda x, x0, idx: out.append(x)).counted
        assert counted == p.spec.cost(p.steps, **p.solver_opts) <= nfe, solver
        assert out[0].shape == (1, *sample_shape) and bool(torch.isfinite(out[0]).all()), solver


def launch(*args, cwd=REPO, env=None, timeout=300):
    """`python launch.py *args` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)
