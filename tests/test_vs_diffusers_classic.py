"""Harness solvers vs diffusers' schedulers on a tiny random-weight UNet2DModel.

The UNet predicts eps on a vp_discrete schedule (linear betas 1e-4..0.02, 1000 steps), wrapped in a
test-local Denoiser that passes the network the timestep diffusers would pass (integer step n for
t = (n + 1)/N). Same initial noise, same timesteps; model calls are counted on both sides.

Conventions where the harness follows the papers rather than diffusers, handled explicitly here:
- Final step: DDPMScheduler, and Euler/Heun with final sigma 0, end with a step to alpha = 1 that
  returns the data prediction. The harness grid ends at t_end > 0; diffusers' last step corresponds to
  one extra x0 evaluation after our solver (the generic denoise_to_zero), applied by hand below.
- PNDM: diffusers' PLMS (skip_prk_steps=True) spends S + 1 calls for S steps (the pseudo-Heun warm-up's
  extra call), which our `plms` matches; its PRK mode spends S + 9, the PNDM paper's F-PNDM count, which
  our `f_pndm` matches with midpoint=time (diffusers puts the RK half steps at n - ratio//2).
- Stochastic samplers get the noise our SampleNoise draws, by patching diffusers' randn_tensor.
- Churn: diffusers' EulerDiscreteScheduler evaluates the network at the un-churned timestep after
  adding churn noise (not EDM's Algorithm 2), so churn is verified against the sigma-space reference
  in test_vs_kdiffusion_ref.py instead.
- IPNDMScheduler runs on its own trigonometric schedule (not alphas_cumprod), so it is not comparable
  on a vp_discrete model; iPNDM is verified against the diff-sampler-style reference instead.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import diffusers  # noqa: E402,F401  (a test dependency: missing must fail, not skip)
from diffusers import DDPMScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, PNDMScheduler, UNet2DModel  # noqa: E402
from diffusers.schedulers import scheduling_ddpm  # noqa: E402

from models.counter import CountedDenoiser  # noqa: E402
from common.errors import NfebenchError  # noqa: E402
from sampling.registry import get_solver  # noqa: E402
from sampling.schedules import make_noise_schedule  # noqa: E402
from sampling.seeds import SampleNoise  # noqa: E402
from sampling.timesteps import SPACINGS, make_grid  # noqa: E402

from helpers import EpsUNet  # noqa: E402

N_TRAIN = 1000
SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    # Random init leaves the output nearly constant; scale it up so the solvers' differences show.
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(1.5)
    return EpsUNet(unet.double().eval(), SHAPE)


class CountingUNet:
    def __init__(self, unet):
        self.unet, self.calls = unet, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.unet(x, t.expand(x.shape[0]).to(x.dtype) if torch.is_tensor(t) else
                         torch.full((x.shape[0],), float(t), dtype=x.dtype)).sample


def t_of_step(n):
    return (np.asarray(n, dtype=np.float64) + 1.0) / N_TRAIN


def _start(model, ts, n=3, seed=1):
    rng = SampleNoise(seed, range(n), model.shape)
    return float(model.noise.sigma(ts[0])) * rng.draw(), rng


class Recorder:
    """Forwards rng.like and keeps every draw, to replay into diffusers."""

    def __init__(self, rng):
        self.rng, self.draws = rng, []

    def like(self, x):
        self.draws.append(self.rng.like(x))
        return self.draws[-1]


def _close(a, b, rtol):
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / scale <= rtol, float((a - b).abs().max()) / scale


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_matches_diffusers_ddpm_scheduler_with_the_same_noise_and_calls(model, variance, monkeypatch):
    sched = DDPMScheduler(num_train_timesteps=N_TRAIN, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                          variance_type=variance, clip_sample=False, timestep_spacing="leading")
    sched.set_timesteps(10)
    steps_n = sched.timesteps.numpy()  # [900, ..., 0]
    ts = t_of_step(steps_n)            # 10 points: 9 of our steps, then diffusers' step 0 -> alpha = 1
    x_start, rng = _start(model, ts)
    rec = Recorder(rng)
    counted = CountedDenoiser(model, None)
    ours = get_solver("ddpm").fn(counted, x_start, ts, model.noise, rec, variance=variance)
    ours = counted(ours, float(ts[-1]))  # diffusers' final step to alpha = 1 returns the x0 prediction

    draws = iter(rec.draws)
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, **kw: next(draws))
    unet, x = CountingUNet(model.unet), x_start.clone()
    for t in sched.timesteps:
        x = sched.step(unet(x, t), t, x).prev_sample
    ok, err = _close(ours, x, 1e-4 if variance == "fixed_small" else 1e-4)
    assert ok, err
    assert counted.count == unet.calls == 10
    assert next(draws, None) is None  # diffusers used exactly our 9 noise draws (none at t = 0)


def test_euler_matches_diffusers_euler_discrete_scheduler_and_its_call_count(model):
    sched = EulerDiscreteScheduler(num_train_timesteps=N_TRAIN, beta_schedule="linear", beta_start=1e-4,
                                   beta_end=0.02, timestep_spacing="leading", steps_offset=1,
                                   final_sigmas_type="sigma_min")
    sched.set_timesteps(10)
    ts = make_grid(model.noise, 10, "discrete", spacing="leading", steps_offset=1)
    assert np.allclose(t_of_step(sched.timesteps.numpy()), ts[:-1])
    x_start, rng = _start(model, ts)
    counted = CountedDenoiser(model, None)
    ours = get_solver("euler").fn(counted, x_start, ts, model.noise, rng)
    a0, a1 = float(model.noise.alpha(ts[0])), float(model.noise.alpha(ts[-1]))
    unet, x = CountingUNet(model.unet), x_start / a0  # diffusers' Euler works in x / alpha
    for t in sched.timesteps:
        x = sched.step(unet(sched.scale_model_input(x, t), t), t, x).prev_sample
    ok, err = _close(ours, a1 * x, 1e-4)  # diffusers keeps sigmas in float32
    assert ok, err
    assert counted.count == unet.calls == 10


def test_heun_matches_diffusers_heun_discrete_scheduler_in_2s_minus_1_calls(model):
    """diffusers' Heun ends with an Euler step to sigma = 0: our Heun with every step corrected on the
    first S points, then one x0 evaluation. Both spend 2S - 1 calls, EDM's count."""
    sched = HeunDiscreteScheduler(num_train_timesteps=N_TRAIN, beta_schedule="linear", beta_start=1e-4,
                                  beta_end=0.02, timestep_spacing="trailing")
    sched.set_timesteps(6)
    first = sched.timesteps.numpy()[::2]  # 6 distinct timesteps
    ts = t_of_step(first)
    x_start, rng = _start(model, ts)
    counted = CountedDenoiser(model, None)
    ours = get_solver("heun").fn(counted, x_start, ts, model.noise, rng, final_euler=False)
    ours = counted(ours, float(ts[-1]))
    a0 = float(model.noise.alpha(ts[0]))
    unet, x = CountingUNet(model.unet), x_start / a0
    for t in sched.timesteps:
        x = sched.step(unet(sched.scale_model_input(x, t), t), t, x).prev_sample
    ok, err = _close(ours, x, 1e-4)
    assert ok, err
    assert counted.count == unet.calls == 2 * 6 - 1


@pytest.mark.parametrize("method", ["plms", "f_pndm"])
def test_pndm_and_plms_match_diffusers_pndm_scheduler_at_the_papers_nfe(model, method):
    skip_prk = method == "plms"
    sched = PNDMScheduler(num_train_timesteps=N_TRAIN, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                          skip_prk_steps=skip_prk, set_alpha_to_one=False, steps_offset=1)
    S = 10
    sched.set_timesteps(S)
    ts = make_grid(model.noise, S, "discrete", spacing="leading", steps_offset=1)  # ends at alphas_cumprod[0]
    x_start, rng = _start(model, ts)
    counted = CountedDenoiser(model, None)
    ours = get_solver("pndm").fn(counted, x_start, ts, model.noise, rng, method=method, midpoint="time")
    unet, x = CountingUNet(model.unet), x_start.clone()
    for t in sched.timesteps:
        x = sched.step(unet(x, t), t, x).prev_sample
    ok, err = _close(ours, x, 1e-4)
    assert ok, err
    paper = S + 1 if skip_prk else S + 9
    assert counted.count == unet.calls == get_solver("pndm").cost(S, method=method) == paper


@pytest.mark.parametrize("spacing,offset", [("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_discrete_spacing_matches_diffusers(spacing, offset):
    noise = make_noise_schedule("vp_discrete")
    sched = EulerDiscreteScheduler(num_train_timesteps=N_TRAIN, timestep_spacing=spacing, steps_offset=offset)
    for steps in (7, 10, 25):
        sched.set_timesteps(steps)
        n = sched.timesteps.numpy().round()
        if spacing == "linspace":
            # linspace always ends on training step 0, i.e. t = 1/N = t_end: diffusers' last step from there
            # goes to alpha = 1, which is denoise_to_zero here, so the grid refuses with a clear message.
            assert n[-1] == 0 and np.array_equal(SPACINGS["linspace"](N_TRAIN, steps), n)
            with pytest.raises(NfebenchError, match="spacing"):
                make_grid(noise, steps, "discrete", spacing=spacing)
            continue
        ts = make_grid(noise, steps, "discrete", spacing=spacing, steps_offset=offset)
        assert np.allclose(ts[:-1], t_of_step(n)) and ts[-1] == noise.eps
    if spacing == "trailing":
        # diffusers' float arange gives 62 timesteps (the last -1) for 61 steps; ours keeps the rule's 61.
        sched.set_timesteps(61)
        ts = make_grid(noise, 61, "discrete", spacing=spacing)
        assert len(sched.timesteps) == 62 and len(ts) == 62
        assert np.allclose(ts[:-1], t_of_step(sched.timesteps.numpy()[:-1].round()))
