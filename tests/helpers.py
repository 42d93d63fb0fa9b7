"""Small shared builders for the tests."""
from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys

import numpy as np
import torch

from common.paths import REPO
from models.counter import CountedDenoiser
from models.denoiser import Denoiser
from models.registry import build_model
from sampling.registry import get_solver
from sampling.schedules import make_noise_schedule
from sampling.seeds import SampleNoise
from sampling.timesteps import make_grid


def gaussian(shape=(1, 4, 4), noise=None, **kw):
    return build_model({"family": "gaussian", "shape": list(shape),
                        "noise_schedule": noise or {"name": "vp_linear"}, **kw})


def solve_steps(model, solver, steps, grid="logsnr", n=8, seed=0, budget=None, grid_opts=None, **opts):
    """Run one solver for a number of steps on n samples; returns (samples, x_start, ts, counter)."""
    spec = get_solver(solver)
    ts = make_grid(model.noise, steps, grid, **(grid_opts or {}))
    rng = SampleNoise(seed, range(n), model.shape)
    x_start = float(model.noise.sigma(ts[0])) * rng.draw()
    counter = CountedDenoiser(model, budget)
    x = spec.fn(counter, x_start, ts, model.noise, rng, **opts)
    return x, x_start, ts, counter


def x_noise(shape=(1, 4, 4)):
    """Three fixed float64 draws (seed 0) of one sample shape."""
    return torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def solve_nfe(model, solver, nfe, grid="logsnr", rng=None, **opts):
    """Run one solver within an NFE budget (its steps from the solver's own rule) on x_noise();
    returns (samples, x_start, ts, counted NFE)."""
    spec = get_solver(solver)
    ts = make_grid(model.noise, spec.steps(nfe, **opts), grid)
    x = float(model.noise.sigma(ts[0])) * x_noise(model.shape)
    counter = CountedDenoiser(model, budget=nfe)
    out = spec.fn(counter, x, ts, model.noise, rng, **opts)
    return out, x, ts, counter.count


def rel_error_nfe(model, solver, nfe, grid="logsnr", **opts) -> float:
    """Relative error of solve_nfe's samples against the closed-form PF-ODE solution."""
    out, x, ts, _ = solve_nfe(model, solver, nfe, grid, **opts)
    ref = model.ode_solution(x, float(ts[0]), float(ts[-1]))
    return float((out - ref).norm() / ref.norm())


def fitted_order_nfe(model, solver, nfes, grid="logsnr", **opts) -> float:
    """Slope of -log(relative error) against log(NFE budget)."""
    errors = [rel_error_nfe(model, solver, n, grid, **opts) for n in nfes]
    return -float(np.polyfit(np.log(nfes), np.log(errors), 1)[0])


def ode_error(model, solver, steps, **kw) -> float:
    x, x_start, ts, _ = solve_steps(model, solver, steps, **kw)
    ref = model.ode_solution(x_start, float(ts[0]), float(ts[-1]))
    return float((x - ref).pow(2).mean().sqrt())


def fitted_order(model, solver, nfes, cost=lambda n: n, **kw) -> float:
    """Slope of -log(error) against log(NFE): the empirical convergence order."""
    steps = [n for n in nfes]
    errs = [ode_error(model, solver, s, **kw) for s in steps]
    slope = np.polyfit(np.log([cost(s) for s in steps]), np.log(errs), 1)[0]
    return -float(slope)


class EpsUNet(Denoiser):
    """A diffusers UNet2DModel as an eps-predicting denoiser on DDPM's linear 1000-step schedule."""
    prediction = "eps"

    def __init__(self, unet, shape):
        self.unet, self.shape = unet, shape
        self.noise = make_noise_schedule("vp_discrete", betas="linear", beta_start=1e-4, beta_end=0.02,
                                         num_train_timesteps=1000)

    def predict(self, x, t, cond=None):
        n = torch.full((x.shape[0],), float(self.noise.model_time(t)), dtype=x.dtype)
        return self.unet(x, n).sample


def write_pngs(folder, images):
    """Images in [-1, 1], (B, C, H, W), as 8-bit PNG files 0000.png, 0001.png, ... in folder."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(torch.round((images.clamp(-1, 1) + 1) * 127.5).to(torch.uint8)):
        a = im.permute(1, 2, 0).numpy()
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(folder / f"{i:04d}.png")
    return folder


class ImageSet(torch.utils.data.Dataset):
    """A tensor of images as the Dataset torch-fidelity's calculate_metrics takes."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


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
    """A solver config's options and its recommended grid's options, as the config files state them
    (a solver without a config file: no options, the logsnr grid)."""
    from omegaconf import OmegaConf

    path = CONFIGS / "solver" / f"{name}.yaml"
    opts = OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else {"name": name}
    grid = "logsnr"
    for entry in opts.pop("defaults", []):
        for key, value in (entry.items() if isinstance(entry, dict) else []):
            if key.endswith("schedule@_global_.schedule"):
                grid = value
    return opts, OmegaConf.to_container(OmegaConf.load(CONFIGS / "schedule" / f"{grid}.yaml"))


# A small DC-Solver fit (it is refitted for every grid): still through the corrector's model call, still cached
CHEAP_FIT = {"dc_solver": {"iterations": 2, "n_noises": 2}}
# Calibrated solvers on the miniatures: DPM-Solver-v3 without its EMS (they need training images the miniatures
# name none of), DC-Solver with a small fit that still differentiates through each family's network
CHEAP_CALIBRATION = {**CHEAP_FIT, "dpm_solver_v3": {"degenerated": True}}


class SyncRecorder:
    """Records the host syncs a GPU run would make (launch.bench.ops.reads_on_host: reads of a value and
    blocking copies between devices; built_on_device: tensors built from host data onto a device), from the
    aten ops CPU tensors dispatch and the torch functions called, except inside
    torch.nn.Module calls (the network's own arithmetic is the model's business, not the sampling loop's)
    and inside functions wrapped by ``unrecorded``."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        from torch.overrides import TorchFunctionMode

        from launch.bench.ops import built_on_device, reads_on_host

        recorder = self
        self.syncs: list[str] = []
        self._depth = 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if recorder._depth == 0 and reads_on_host(func, args, kwargs):
                    recorder.syncs.append(str(func))
                return func(*args, **kwargs)

        class Built(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if recorder._depth == 0 and built_on_device(func, kwargs):
                    recorder.syncs.append(f"torch.{func.__name__} onto {kwargs['device']}")
                return func(*args, **kwargs)

        self._mode, self._built = Mode(), Built()

    def unrecorded(self, fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
        return call

    def _enter_module(self, *_):
        self._depth += 1

    def _leave_module(self, *_):
        self._depth -= 1

    def __enter__(self):
        from torch.nn.modules import module

        self._hooks = [module.register_module_forward_pre_hook(self._enter_module),
                       module.register_module_forward_hook(self._leave_module)]
        self._built.__enter__()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        self._built.__exit__(*exc)
        for h in self._hooks:
            h.remove()


def solver_cases(variants: dict):
    """pytest params (name, options, grid options) of every registered solver with its config's options (a small
    DC-Solver fit), then each of ``variants[name]`` (options over those), ids "<name>-<option>=<value>"."""
    import pytest

    from sampling.registry import SOLVERS

    get_solver("ddim")  # imports every solver module, so SOLVERS is complete
    for name in sorted(SOLVERS):
        opts, schedule = solver_defaults(name)
        for extra in [{}] + variants.get(name, []):
            label = "-".join(f"{k}={v}" for k, v in extra.items()) or "default"
            yield pytest.param(name, {**opts, **CHEAP_FIT.get(name, {}), **extra}, schedule, id=f"{name}-{label}")


def every_solver_runs(model_cfg: dict, model, sample_shape) -> None:
    """Every registered solver, with its defaults, samples a finite batch and spends exactly its NFE rule,
    with one host sync in the batch loop: its finiteness check (launch.run.sample_batches), none in the
    solver, the NFE counter or the family's adapter (SyncRecorder; the network itself is not looked at); and on
    another device no blocking copy (batch_copies_nothing_blocking)."""
    from launch import calibration
    from launch.run import plan
    from sampling.registry import SOLVERS

    for solver in sorted(SOLVERS):
        needs = get_solver(solver).model_needs
        if needs and not all(hasattr(model, n) for n in needs):
            continue  # a solver that declares a model method this model lacks (dlg: the noise-level posterior)
        opts, schedule = solver_defaults(solver)
        opts.update(CHEAP_CALIBRATION.get(solver, {}))
        nfe = max(6, get_solver(solver).min_nfe(**{k: v for k, v in opts.items() if k != "name"}))
        cfg = {"nfe": nfe, "num_samples": 1, "batch_size": 1, "seed": 0, "sample_offset": 0, "t_end": None,
               "dtype": "float32", "model": model_cfg, "solver": dict(opts), "schedule": schedule}
        p = plan(cfg)
        calibrated, _ = calibration.prepare(cfg, p, model, torch.device("cpu"))  # into NFEBENCH_CALIBRATION_CACHE
        x, stats = sampled(cfg, model, calibrated)
        assert stats.counted == p.spec.cost(p.steps, **p.solver_opts) <= nfe, solver
        assert x.shape == (1, *sample_shape) and bool(torch.isfinite(x).all()), solver
    batch_copies_nothing_blocking(model_cfg, model)


# the family checks' solvers on "meta": the data-form and eps-form call paths and a noise-drawing one; every
# solver's own copies are checked on the analytic model (tests/test_no_host_sync.py)
ON_DEVICE = ("dpmpp", "pndm", "ddpm")


def sampled(cfg: dict, model, calibrated=None):
    """launch.run.sample_batches on the CPU, as a run samples: (samples, stats). Under a SyncRecorder: the loop's
    only host syncs are its finiteness checks, one per batch, none in the solver, the NFE counter or the
    model's adapter (the network itself is not looked at)."""
    from launch.run import plan, sample_batches

    out = []
    with SyncRecorder() as rec:
        stats = sample_batches(cfg, plan(cfg), model, torch.device("cpu"), lambda x, x0, idx: out.append(x),
                               calibrated)
    assert rec.syncs == ["aten._local_scalar_dense.default"] * len(out), f"host syncs {rec.syncs}"
    return torch.cat(out), stats


def recorded_batch(cfg: dict, model, device, recorder=None, calibrated=None):
    """A run's second batch on ``device`` under a SyncRecorder, after a first batch that warms the run's caches
    (and moves a network to the device): (samples, counter, recorder). cfg is a whole run config."""
    from launch.run import plan, sample_batch

    p, n, recorder = plan(cfg), cfg["batch_size"], recorder or SyncRecorder()
    state = p.spec.run_state(cfg["seed"], model.shape, p.dtype, device, **p.solver_opts) if p.spec.run_state else None
    sample_batch(cfg, p, model, range(n), device, calibrated=calibrated, run_state=state)
    with recorder:
        x, _, counter = sample_batch(cfg, p, model, range(n, 2 * n), device, calibrated=calibrated, run_state=state)
    assert counter.count == p.spec.cost(p.steps, **p.solver_opts)
    return x, counter, recorder


def batch_copies_nothing_blocking(model_cfg: dict, model, solvers=ON_DEVICE) -> None:
    """A batch on the "meta" device (shapes only: a host read would fail) with a copy of the model (its
    network moves there): every copy between host and device is non-blocking (SyncRecorder)."""
    model, meta = copy.deepcopy(model), torch.device("meta")
    for solver in solvers:
        opts, schedule = solver_defaults(solver)
        cfg = {"nfe": 6, "num_samples": 2, "batch_size": 2, "seed": 0, "sample_offset": 0, "t_end": None,
               "dtype": "float32", "model": model_cfg, "solver": dict(opts), "schedule": schedule}
        x, _, rec = recorded_batch(cfg, model, meta)
        assert x.device == meta and rec.syncs == [], f"{solver}: blocking copies {rec.syncs}"


def launch_argv(*args) -> list:
    """The command line `python launch.py *args`."""
    return [sys.executable, str(REPO / "launch.py"), *args]


def offline_env(extra=None) -> dict:
    """This process's environment with no hub and no wandb network (as conftest.py sets it), plus extra."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(extra or {})}


def launch(*args, cwd=REPO, env=None, timeout=600, **kw):
    """`python launch.py *args` in a subprocess, as a user runs it; env adds to offline_env()."""
    return subprocess.run(launch_argv(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=offline_env(env), **kw)


def start_launch(*args):
    """`python launch.py *args` started in the background, for tests that signal it or watch its workers."""
    return subprocess.Popen(launch_argv(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=offline_env())


def run_module(module, *args, timeout=300):
    """`python -m module *args` in a subprocess (results.collect, results.leaderboard), as a user runs it."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=offline_env())
