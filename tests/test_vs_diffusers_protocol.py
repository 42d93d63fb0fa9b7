"""protocol=diffusers against each diffusers scheduler constructed with no arguments, on a miniature
`cifar10_ddpm` (a tiny random UNet2DModel saved with save_pretrained, loaded through model.path).

nfebench runs through launch.run.plan / sample_batches on the Hydra-composed config (the path launch.py
takes; one case also through `python launch.py` itself); diffusers runs its own scheduler loop
(set_timesteps, scale_model_input, step) on the same network and the same initial noise. The only
argument any scheduler gets is HeunDiscreteScheduler's betas: its own defaults (0.00085..0.012) are
Stable Diffusion's, not this DDPM model's, so the "default" Heun uses the model's training betas.
PNDMScheduler() makes num_inference_steps + 9 model calls, the last a zero-length step at training step 0
(counted here too: nfe = 19 is num_inference_steps = 10; 9 steps give ratio 111, odd half steps).
Observed agreement: 1e-7..3e-7 relative (diffusers keeps its schedule in float32); DDIM's clipped
x0 makes its output O(1) instead of O(100), so it is checked in absolute terms.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import diffusers  # noqa: F401  (a declared test dependency: missing must fail, not skip)

from launch.run import load_model, plan, sample_batches

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
from helpers import CONFIGS
from test_models_pretrained import save_checkpoint  # noqa: E402

DDPM_BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
DEFAULT_SCHEDULERS = {
    "dpmpp": lambda: diffusers.DPMSolverMultistepScheduler(),
    "unipc": lambda: diffusers.UniPCMultistepScheduler(),
    "deis": lambda: diffusers.DEISMultistepScheduler(),
    "euler": lambda: diffusers.EulerDiscreteScheduler(),
    "heun": lambda: diffusers.HeunDiscreteScheduler(**DDPM_BETAS),
    "ddim": lambda: diffusers.DDIMScheduler(),
    "pndm": lambda: diffusers.PNDMScheduler(),
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint("cifar10_ddpm", tmp_path_factory.mktemp("ckpt"))


def ours(ckpt, solver, nfe, *extra):
    overrides = ["model=cifar10_ddpm", f"model.path={ckpt}", f"solver={solver}", f"nfe={nfe}", "protocol=diffusers",
                 "num_samples=2", "batch_size=2", "dtype=float64", "metrics=none", "device=cpu", *extra]
    with initialize_config_dir(str(CONFIGS), version_base=None):
        cfg = OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
    p, out = plan(cfg), {}

    def keep(x, x0, idx):
        out["x"], out["start"] = x, x0

    counted = sample_batches(cfg, p, load_model(cfg), torch.device("cpu"), keep).counted
    return out["x"], out["start"], p.ts, counted


def diffusers_loop(ckpt, sched, num_steps, x, last_step_x0=False):
    """diffusers' own sampling loop; last_step_x0 replaces the final step by its sigma -> 0 limit (x0)."""
    unet = diffusers.UNet2DModel.from_pretrained(ckpt).eval()  # as nfebench loads it: float32 network
    sched.set_timesteps(num_steps)
    calls = 0
    timesteps = list(sched.timesteps)
    with torch.no_grad():
        for k, t in enumerate(timesteps):
            eps = unet(sched.scale_model_input(x, t).float(), t.reshape(1).float().expand(len(x))).sample.double()
            calls += 1
            if last_step_x0 and k == len(timesteps) - 1:
                a = float(sched.alphas_cumprod[int(t)])
                return (x - (1 - a) ** 0.5 * eps) / a ** 0.5, calls
            x = sched.step(eps, t, x).prev_sample
    return x, calls


@pytest.mark.parametrize("solver,nfe,num_steps", [("dpmpp", 10, 10), ("unipc", 10, 10), ("deis", 10, 10),
                                                  ("euler", 10, 10), ("heun", 19, 10), ("ddim", 10, 10),
                                                  ("unipc", 16, 16), ("pndm", 19, 10), ("pndm", 18, 9),
                                                  ("pndm", 13, 4)])
def test_protocol_diffusers_equals_default_scheduler(ckpt, solver, nfe, num_steps):
    x, start, ts, counted = ours(ckpt, solver, nfe)
    sched = DEFAULT_SCHEDULERS[solver]()
    x_in = start.clone()
    if solver in ("euler", "heun"):  # diffusers' Euler/Heun work in x / alpha
        x_in = x_in / float(sched.alphas_cumprod[int(sched.config.num_train_timesteps - 1)]) ** 0.5
    ref, calls = diffusers_loop(ckpt, sched, num_steps, x_in)
    assert counted == calls == nfe
    if solver == "ddim":
        # diffusers' float32 cumprod moves alphas_cumprod[900] by ~1e-5 relative, and DDIM's x0 at t = 900 is
        # ~60x the sample: seen 4.8e-4 absolute on O(1) clipped outputs. With diffusers' alphas_cumprod
        # recomputed in float64, the two agree to 1e-9.
        assert float((x - ref).abs().max()) < 2e-3 and float(x.abs().max()) <= 1.0
        sched = DEFAULT_SCHEDULERS[solver]()
        sched.alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
        ref64, _ = diffusers_loop(ckpt, sched, num_steps, start.clone())
        assert float((x - ref64).abs().max()) < 1e-8, float((x - ref64).abs().max())
    else:
        assert float((x - ref).norm() / ref.norm()) < 1e-5


def test_protocol_grids_are_diffusers_timesteps(ckpt):
    """The grids themselves: [999, 899, ..., 100] for linspace (not nfebench's discrete grid), DDIM's [900..0]."""
    for solver, nfe, sched in [("dpmpp", 10, diffusers.DPMSolverMultistepScheduler()),
                               ("deis", 10, diffusers.DEISMultistepScheduler()),
                               ("ddim", 10, diffusers.DDIMScheduler())]:
        with initialize_config_dir(str(CONFIGS), version_base=None):
            cfg = OmegaConf.to_container(compose("config", overrides=[
                "model=cifar10_ddpm", f"model.path={ckpt}", f"solver={solver}", f"nfe={nfe}", "protocol=diffusers"]),
                resolve=True)
        ts = plan(cfg).ts
        sched.set_timesteps(10)
        n = sched.timesteps.numpy().astype(np.float64)
        want = (n + 1) / 1000 if solver != "deis" else np.append((n + 1) / 1000, 1e-3)
        assert np.allclose(ts, want), (solver, ts * 1000 - 1)


@pytest.mark.parametrize("family,spacing,offset", [("dpmsolver", "leading", 1), ("dpmsolver", "trailing", 0),
                                                   ("dpmsolver", "linspace", 0), ("euler", "trailing", 0),
                                                   ("euler", "leading", 1), ("ddim", "trailing", 0)])
def test_diffusers_grid_families_match_set_timesteps(family, spacing, offset):
    from sampling.schedules import make_noise_schedule
    from sampling.timesteps import make_grid

    cls = {"dpmsolver": diffusers.UniPCMultistepScheduler, "euler": diffusers.EulerDiscreteScheduler,
           "ddim": diffusers.DDIMScheduler}[family]
    noise = make_noise_schedule("vp_discrete")
    for N in (7, 10, 25):
        s = cls(timestep_spacing=spacing, steps_offset=offset)
        s.set_timesteps(N)
        n = s.timesteps.numpy().astype(np.float64)
        ts = make_grid(noise, N - 1, "diffusers", family=family, spacing=spacing, steps_offset=offset, final="zero")
        assert np.allclose(ts * 1000 - 1, n), (N, ts * 1000 - 1, n)
    if family == "dpmsolver" and spacing == "leading":  # the example: not nfebench's [901, 801, ..., 1]
        ts = make_grid(noise, 9, "diffusers", family=family, spacing=spacing, steps_offset=offset, final="zero")
        assert np.round(ts * 1000 - 1).tolist() == [901, 811, 721, 631, 541, 451, 361, 271, 181, 91]


def test_unipc_bh1_final_x0_step_is_finite_where_diffusers_returns_nan(ckpt):
    """diffusers' UniPC bh1 with its default final_sigmas_type="zero" returns NaN (B(h) = h with h = inf at
    the last step). nfebench's last step is the x0 prediction, the sigma -> 0 limit of that step: finite, and
    equal to diffusers' loop with its last step replaced by that limit."""
    x, start, ts, counted = ours(ckpt, "unipc", 10, "solver.variant=bh1")
    nan_ref, _ = diffusers_loop(ckpt, diffusers.UniPCMultistepScheduler(solver_type="bh1"), 10, start.clone())
    assert torch.isnan(nan_ref).all()
    ref, calls = diffusers_loop(ckpt, diffusers.UniPCMultistepScheduler(solver_type="bh1"), 10, start.clone(),
                                last_step_x0=True)
    assert torch.isfinite(x).all() and counted == calls == 10
    assert float((x - ref).norm() / ref.norm()) < 1e-5


def _launch_preset(ckpt, out, *overrides):
    """launch.py on the miniature cifar10_ddpm under protocol=diffusers, two samples, no metrics."""
    from helpers import launch

    return launch("model=cifar10_ddpm", f"model.path={ckpt}", *overrides, "protocol=diffusers", "num_samples=2",
                  "metrics=none", "device=cpu", f"hydra.run.dir={out}")


def _preset_record(ckpt, tmp_path, *overrides) -> dict:
    """The record of a successful _launch_preset run."""
    import json

    out = tmp_path / "run"
    r = _launch_preset(ckpt, out, *overrides)
    assert r.returncode == 0, r.stderr
    return json.loads((out / "record.json").read_text())


def test_protocol_diffusers_pndm_through_launch_py_counts_its_last_call(ckpt, tmp_path):
    """PNDMScheduler() through launch.py: its grid, its wasted last call counted, and nfe below 13 refused
    (the samples themselves are compared on the same plan/sample_batches path above)."""
    rec = _preset_record(ckpt, tmp_path, "solver=pndm", "nfe=19")
    sched = diffusers.PNDMScheduler()
    sched.set_timesteps(10)
    assert np.allclose(rec["schedule"]["t_grid"], (np.arange(900, -1, -100) + 1.0) / 1000)
    assert rec["nfe"]["counted"] == len(sched.timesteps) == 19 and rec["schedule"]["final_x0_step"] is False
    assert rec["solver"]["step_orders"] == ["rk4"] * 3 + [4] * 6 + ["zero_step"]
    bad = tmp_path / "bad"
    r = _launch_preset(ckpt, bad, "solver=pndm", "nfe=12")
    assert r.returncode == 2 and "PNDMScheduler needs at least 4 timesteps" in r.stderr.strip().splitlines()[-1]
    assert not (bad / "record.json").exists()


def test_protocol_diffusers_through_launch_py_runs_dpmpp_on_diffusers_grid(ckpt, tmp_path):
    """The issue's command, as a user types it: the saved samples equal DPMSolverMultistepScheduler()'s."""
    rec = _preset_record(ckpt, tmp_path, "solver=dpmpp", "nfe=10")
    sched = diffusers.DPMSolverMultistepScheduler()
    sched.set_timesteps(10)
    assert np.allclose(rec["schedule"]["t_grid"], (sched.timesteps.numpy() + 1.0) / 1000)
    assert rec["schedule"]["name"] == "diffusers" and rec["schedule"]["final_x0_step"] is True
    assert rec["nfe"]["counted"] == 10 and rec["solver"]["options"]["lower_order_final"] == "never"
    # a solver without a preset is one error line, exit 2, no record
    bad = tmp_path / "bad"
    r = _launch_preset(ckpt, bad, "solver=ipndm")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("nfebench: error: protocol 'diffusers'")
    assert not (bad / "record.json").exists()
