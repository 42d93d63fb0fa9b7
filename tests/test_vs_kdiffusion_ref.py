"""Independent sigma-space references (k-diffusion style, written here) vs the harness solvers.

k-diffusion cannot be installed next to numpy 2 here, so each reference below is a direct
transcription of the paper's algorithm in EDM sigma space (x_e = x/alpha, D(x_e; sigma)), structured
like k-diffusion's samplers (a sigmas list, to_d, a python loop) rather than like the solver under
test. Same denoiser, same sigmas, same noise stream -> the same samples to float64 round-off.

Noise: k-diffusion's sample_euler/heun draw a normal every step even when gamma = 0; the harness
only draws when it churns. The references draw only when gamma > 0 so that both consume the same
per-sample stream; what is compared is the arithmetic.
"""
from __future__ import annotations

import math

import pytest
import torch

from helpers import gaussian
from sampling.registry import get_solver
from sampling.seeds import SampleNoise
from sampling.timesteps import make_grid



# These tests build tensors with torch's default dtype; keep float64 local to this module.
pytestmark = pytest.mark.usefixtures("float64_default")


def sigma_denoiser(model):
    def D(x_e, sigma):
        t = float(model.noise.t_of_edm_sigma(sigma))
        a = float(model.noise.alpha(t))
        return model(a * x_e, t)
    return D


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def ref_euler(D, x, sigmas, noise_fn, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + noise_fn(x) * s_noise * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        d = to_d(x, sigma_hat, D(x, sigma_hat))
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


def ref_heun(D, x, sigmas, noise_fn, euler_last=True, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + noise_fn(x) * s_noise * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        d = to_d(x, sigma_hat, D(x, sigma_hat))
        dt = sigmas[i + 1] - sigma_hat
        if euler_last and i == len(sigmas) - 2:  # k-diffusion: when sigmas[i+1] == 0
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], D(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
    return x


def ref_ipndm(D, x, sigmas, max_order=4):
    """diff-sampler style: keep the last derivatives, Adams-Bashforth with warm-up orders."""
    buf = []
    for i in range(len(sigmas) - 1):
        d = to_d(x, sigmas[i], D(x, sigmas[i]))
        order = min(max_order, i + 1)
        h = sigmas[i + 1] - sigmas[i]
        if order == 1:
            x = x + h * d
        elif order == 2:
            x = x + h * (3 * d - buf[-1]) / 2
        elif order == 3:
            x = x + h * (23 * d - 16 * buf[-1] + 5 * buf[-2]) / 12
        else:
            x = x + h * (55 * d - 59 * buf[-1] + 37 * buf[-2] - 9 * buf[-3]) / 24
        buf = (buf + [d])[-3:]
    return x


def ref_f_pndm(D, x, sigmas):
    """PNDM in sigma space: the transfer x + (sigma' - sigma) e is DDIM; RK4 warm-up for 3 steps, then AB4."""
    ets = []
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        sm = (s + s1) / 2
        e1 = to_d(x, s, D(x, s))
        if len(ets) < 3:
            e2 = to_d(x + (sm - s) * e1, sm, D(x + (sm - s) * e1, sm))
            e3 = to_d(x + (sm - s) * e2, sm, D(x + (sm - s) * e2, sm))
            e4 = to_d(x + (s1 - s) * e3, s1, D(x + (s1 - s) * e3, s1))
            e = (e1 + 2 * e2 + 2 * e3 + e4) / 6
        else:
            e = (55 * e1 - 59 * ets[-1] + 37 * ets[-2] - 9 * ets[-3]) / 24
        ets.append(e1)
        x = x + (s1 - s) * e
    return x


def ref_pc_ve(D, x, sigmas, noise_fn, snr, n_corrector):
    """Song et al. Alg. 2-3 for VE SDE: Langevin corrector then reverse-diffusion predictor."""
    for i in range(len(sigmas) - 1):
        for _ in range(n_corrector):
            grad = (D(x, sigmas[i]) - x) / sigmas[i] ** 2
            z = noise_fn(x)
            g_norm = grad.reshape(len(x), -1).norm(dim=-1).reshape(-1, 1, 1, 1)
            z_norm = z.reshape(len(x), -1).norm(dim=-1).reshape(-1, 1, 1, 1)
            step = 2 * (snr * z_norm / g_norm) ** 2
            x = x + step * grad + torch.sqrt(2 * step) * z
        var = sigmas[i] ** 2 - sigmas[i + 1] ** 2
        x = x + var * (D(x, sigmas[i]) - x) / sigmas[i] ** 2 + math.sqrt(var) * noise_fn(x)
    return x


def _run(model, solver, steps, grid, seed=3, **opts):
    ts = make_grid(model.noise, steps, grid)
    sig = [float(v) for v in model.noise.edm_sigma(ts)]
    rng_a, rng_b = SampleNoise(seed, range(5), model.shape), SampleNoise(seed, range(5), model.shape)
    x_start = float(model.noise.sigma(ts[0])) * rng_a.draw()
    rng_b.draw()
    ours = get_solver(solver).fn(model, x_start, ts, model.noise, rng_a, **opts)
    a0, a1 = float(model.noise.alpha(ts[0])), float(model.noise.alpha(ts[-1]))
    return ours, x_start / a0, sig, rng_b.like, a1


NOISES = [{"name": "vp_linear"}, {"name": "ve"}, {"name": "edm"}]
CASES = [
    ("euler", {}, lambda D, x, s, nf: ref_euler(D, x, s, nf)),
    ("euler", {"S_churn": 30, "S_tmin": 0.05, "S_tmax": 10.0, "S_noise": 1.003},
     lambda D, x, s, nf: ref_euler(D, x, s, nf, 30, 0.05, 10.0, 1.003)),
    ("heun", {}, lambda D, x, s, nf: ref_heun(D, x, s, nf)),
    ("heun", {"final_euler": False}, lambda D, x, s, nf: ref_heun(D, x, s, nf, euler_last=False)),
    ("heun", {"S_churn": 30, "S_tmin": 0.05, "S_tmax": 10.0, "S_noise": 1.003},
     lambda D, x, s, nf: ref_heun(D, x, s, nf, True, 30, 0.05, 10.0, 1.003)),
    ("ipndm", {"order": 4}, lambda D, x, s, nf: ref_ipndm(D, x, s, 4)),
    ("ipndm", {"order": 2}, lambda D, x, s, nf: ref_ipndm(D, x, s, 2)),
    ("pndm", {"method": "f_pndm"}, lambda D, x, s, nf: ref_f_pndm(D, x, s)),
]


@pytest.mark.parametrize("noise", NOISES, ids=[n["name"] for n in NOISES])
@pytest.mark.parametrize("solver,opts,ref", CASES, ids=[f"{s}-{o}" for s, o, _ in CASES])
def test_classic_solvers_match_the_sigma_space_reference_loops(noise, solver, opts, ref):
    model = gaussian(noise=noise)
    ours, x_e, sig, noise_fn, a_end = _run(model, solver, 7, "karras", **opts)
    theirs = a_end * ref(sigma_denoiser(model), x_e, sig, noise_fn)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12), float((ours - theirs).abs().max())


@pytest.mark.parametrize("n_corrector", [0, 1, 2])
def test_score_sde_pc_matches_song_ve_reference(n_corrector):
    model = gaussian(noise={"name": "ve"})
    ours, x_e, sig, noise_fn, _ = _run(model, "score_sde_pc", 6, "time_uniform", n_corrector=n_corrector, snr=0.16)
    theirs = ref_pc_ve(sigma_denoiser(model), x_e, sig, noise_fn, 0.16, n_corrector)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12), float((ours - theirs).abs().max())
