"""Named protocols against transcriptions of the code they claim to reproduce, run through the harness's
run path (launch.run.plan / sample_batches on a Hydra-composed config, as launch.py does).

- DDIM's reference code (ermongroup/ddim, functions/denoising.py): generalized_steps on the uniform and
  quadratic skip grids of runners/diffusion.py, and ddpm_steps (its "ddpm_noisy" sampler, Table 1's
  eta = sigma_hat row). Transcribed here from the paper's code as read, in plain tensor ops.
- EDM's edm_sampler (NVlabs/edm generate.py, Algorithm 1 with S_churn = 0), transcribed the same way.
- Seeds: float32 and float64 runs of one seed start from the same noise.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from launch.run import load_model, plan, sample_batches
from common.errors import NfebenchError
from sampling.seeds import SampleNoise

from helpers import CONFIGS

BETAS = np.linspace(1e-4, 0.02, 1000)  # DDPM's linear schedule = model/noise_schedule=vp_discrete


def run(*overrides):
    """(samples, initial noise, grid, counted NFE, record-style cfg) of a run composed as launch.py composes it."""
    with initialize_config_dir(str(CONFIGS), version_base=None):
        cfg = OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)
    p, model, out = plan(cfg), load_model(cfg), {}

    def keep(x, x0, idx):
        out["x"], out["start"] = x, x0

    counted = sample_batches(cfg, p, model, torch.device("cpu"), keep).counted
    return out["x"], out["start"], p.ts, counted, model


GAUSS_DISCRETE = ["model=gaussian", "model/noise_schedule=vp_discrete", "num_samples=4", "batch_size=4",
                  "metrics=none", "device=cpu", "model.var_max=2.0", "model.mean_scale=1.0"]


def compute_alpha(n):
    """DDIM code's compute_alpha: cumprod(1 - beta) with a 1 prepended, indexed at n + 1 (n = -1 gives 1)."""
    a = np.concatenate([[1.0], np.cumprod(1 - BETAS)])
    return float(a[n + 1])


def ddim_generalized_steps(model, x, seq, eta=0.0, noise=None):
    """DDIM's reference loop: seq ascending training steps, walked from the top, the last step to n = -1."""
    seq_next = [-1] + list(seq[:-1])
    for i, j in zip(reversed(seq), reversed(seq_next)):
        at, at_next = compute_alpha(i), compute_alpha(j)
        # the network sees step i; nfebench's model maps t = (i + 1)/N to it, so ask for x0 there and form eps
        et = (x - at ** 0.5 * model(x, (i + 1) / 1000)) / (1 - at) ** 0.5
        x0_t = (x - et * (1 - at) ** 0.5) / at ** 0.5
        c1 = eta * ((1 - at / at_next) * (1 - at_next) / (1 - at)) ** 0.5
        c2 = ((1 - at_next) - c1 ** 2) ** 0.5
        x = at_next ** 0.5 * x0_t + c2 * et + (c1 * noise.like(x) if c1 > 0 else 0)
    return x


def ddim_ddpm_steps(model, x, seq, noise):
    """DDIM code's ddpm_steps ("ddpm_noisy"): posterior mean of the clamped x0, variance beta_t = 1 - at/at_next."""
    seq_next = [-1] + list(seq[:-1])
    for i, j in zip(reversed(seq), reversed(seq_next)):
        at, atm1 = compute_alpha(i), compute_alpha(j)
        beta_t = 1 - at / atm1
        e = (x - at ** 0.5 * model(x, (i + 1) / 1000)) / (1 - at) ** 0.5
        x0 = ((1 / at) ** 0.5 * x - (1 / at - 1) ** 0.5 * e).clamp(-1, 1)
        mean = (atm1 ** 0.5 * beta_t * x0 + (1 - beta_t) ** 0.5 * (1 - atm1) * x) / (1 - at)
        x = mean + (beta_t ** 0.5 * noise.like(x) if i != 0 else 0)  # no noise at step 0, as its mask does
    return x


def skip_seq(kind, S, N=1000):
    if kind == "uniform":
        return list(range(0, N, N // S))
    return [int(s) for s in np.linspace(0, np.sqrt(N * 0.8), S) ** 2]


@pytest.mark.parametrize("kind,S", [("uniform", 10), ("quadratic", 10), ("uniform", 20), ("quadratic", 50)])
def test_ddim_skip_grids_equal_ddim_reference_loop(kind, S):
    x, start, ts, counted, model = run(*GAUSS_DISCRETE, "solver=ddim", f"schedule=ddim_{kind}", f"nfe={S}")
    seq = skip_seq(kind, S)
    assert np.allclose(ts * 1000 - 1, sorted(set(seq), reverse=True))  # starts at (S-1)*skip (uniform), not 999
    ref = ddim_generalized_steps(model, start.clone(), seq)
    assert torch.allclose(x, ref, rtol=0, atol=1e-10), float((x - ref).abs().max())
    # quadratic S = 50 repeats step 0: DDIM's code spends an evaluation on a no-op step, the harness merges it
    assert counted == len(set(seq)) and (counted < S) == (kind == "quadratic" and S == 50)


def test_ddim_eta1_on_skip_grid_equals_reference_with_the_same_noise():
    x, start, ts, counted, model = run(*GAUSS_DISCRETE, "solver=ddim", "solver.eta=1.0", "schedule=ddim_uniform", "nfe=10")
    rng = SampleNoise(0, range(4), model.shape)
    rng.draw()  # the initial noise; per-step draws follow in the same stream, as in the run
    ref = ddim_generalized_steps(model, start.clone(), skip_seq("uniform", 10), eta=1.0, noise=rng)
    assert torch.allclose(x, ref, rtol=0, atol=1e-10)


def test_ddim_sigma_hat_row_is_ddpm_fixed_large():
    """DDIM Table 1's eta = sigma_hat row is DDIM's code's ddpm_noisy sampler: nfebench's ddpm with
    variance=fixed_large on DDIM's grid, with x0 clamped to [-1, 1] (static clipping = dynamic_thresholding
    with max_value 1)."""
    x, start, ts, counted, model = run(*GAUSS_DISCRETE, "solver=ddpm", "solver.variance=fixed_large",
                                       "schedule=ddim_uniform", "nfe=10", "dynamic_thresholding.enabled=true")
    rng = SampleNoise(0, range(4), model.shape)
    rng.draw()
    ref = ddim_ddpm_steps(model, start.clone(), skip_seq("uniform", 10), rng)
    assert torch.allclose(x, ref, rtol=0, atol=1e-10)
    assert float(x.abs().max()) <= 1.0  # the final step is the clamped x0
    small, *_ = run(*GAUSS_DISCRETE, "solver=ddpm", "schedule=ddim_uniform", "nfe=10", "dynamic_thresholding.enabled=true")
    assert not torch.allclose(small, ref, atol=1e-3)  # fixed_small is another sampler


def test_ddim_uniform_refuses_uneven_skips():
    with pytest.raises(NfebenchError, match="divides 1000"):
        run(*GAUSS_DISCRETE, "solver=ddim", "schedule=ddim_uniform", "nfe=30")


def edm_sampler(net, latents, num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM generate.py's edm_sampler (Algorithm 1, S_churn = 0): Heun on a rho-grid, t_N = 0, no correction at the end."""
    i = torch.arange(num_steps, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    x_next = latents * t[0]
    for k in range(num_steps):
        t_cur, t_next = float(t[k]), float(t[k + 1])
        x_cur = x_next
        d_cur = (x_cur - net(x_cur, t_cur)) / t_cur
        x_next = x_cur + (t_next - t_cur) * d_cur
        if k < num_steps - 1:
            d_prime = (x_next - net(x_next, t_next)) / t_next
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


@pytest.mark.parametrize("steps", [18, 5])
def test_heun_final_step_edm_equals_edm_sampler(steps):
    nfe = 2 * steps - 1  # EDM's count: 35 NFE at 18 steps
    x, start, ts, counted, model = run("model=gaussian", "model/noise_schedule=edm", "num_samples=3", "metrics=none",
                                       "device=cpu", "solver=heun", "solver.final_step=edm", f"nfe={nfe}",
                                       "schedule.sigma_min=0.002", "schedule.sigma_max=80")
    ref = edm_sampler(lambda y, s: model(y, s), start / 80.0, num_steps=steps)  # start = sigma_max * latents
    assert counted == nfe and len(ts) == steps  # N - 1 grid steps, then Euler sigma_min -> 0
    assert torch.allclose(x, ref, rtol=0, atol=1e-9), float((x - ref).abs().max())
    # final_euler (the default) spends the same NFE but ends at sigma_min without the last correction
    y, *_ = run("model=gaussian", "model/noise_schedule=edm", "num_samples=3", "metrics=none", "device=cpu",
                "solver=heun", f"nfe={nfe}", "schedule.sigma_min=0.002", "schedule.sigma_max=80")
    assert float((y - ref).abs().max()) > 1e-4


def test_heun_final_step_rejects_unknown_and_churn():
    base = ["model=gaussian", "num_samples=2", "metrics=none", "solver=heun", "nfe=9"]
    with pytest.raises(NfebenchError, match="unknown heun final_step .euler.; valid: None, edm"):
        run(*base, "solver.final_step=euler")
    with pytest.raises(NfebenchError, match="final_step=edm is EDM's deterministic"):
        run(*base, "solver.final_step=edm", "solver.S_churn=5")


def test_seeds_do_not_depend_on_dtype():
    """float32 and float64 runs of one seed start from the same noise (float32 draws, cast up)."""
    common = ["model=gaussian", "num_samples=5", "batch_size=2", "metrics=none", "device=cpu", "solver=ddim", "nfe=4"]
    _, s32, *_ = run(*common, "dtype=float32")
    _, s64, *_ = run(*common, "dtype=float64")
    assert s32.dtype == torch.float32 and s64.dtype == torch.float64
    # x_start = sigma_T * noise is formed in the run's dtype: equal to float32 rounding (unrelated draws differ by O(1))
    assert torch.allclose(s32.double(), s64, rtol=1e-6, atol=1e-7)
    a = SampleNoise(3, [0, 7], (16,), dtype=torch.float64)
    b = SampleNoise(3, [0, 7], (16,), dtype=torch.float32)
    for _ in range(3):  # per-step draws too
        assert torch.equal(a.draw(), b.draw().double())
