"""Exponential-integrator solvers against diffusers' schedulers on a tiny random UNet2DModel.

Same eps-network, same initial sample, same time grid: our continuous t for diffusers' integer
timestep n is t = (n+1)/N (the inverse of VPDiscrete.model_time), and diffusers' final
"sigma_min" point (alphas_cumprod[0]) is t = 1/N. Every scheduler is built with
final_sigmas_type="sigma_min" where it has the option: its default "zero" jumps to sigma = 0 with
a forced first-order last step, which the harness leaves to the lead's generic denoise_to_zero.
diffusers computes its schedule in float32, so agreement is to 1e-5 relative (seen: 2e-8..3e-7).
Model calls are counted on both sides and must match.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import diffusers  # noqa: E402  (a test dependency: missing must fail, not skip)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers DEIS vs numpy 2

from models.counter import CountedDenoiser  # noqa: E402
from sampling.registry import get_solver  # noqa: E402
from sampling.seeds import SampleNoise  # noqa: E402

from helpers import EpsUNet  # noqa: E402

N = 1000
BETAS = dict(num_train_timesteps=N, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
SHAPE = (3, 8, 8)
TOL = 1e-5  # the issue asks 1e-4; seen <= 3e-7 (diffusers keeps alphas_cumprod in float32)


def build_unet_model():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).double().eval()
    return EpsUNet(unet, SHAPE)


@pytest.fixture(scope="module")
def model():
    return build_unet_model()


def _x_start(seed=0):
    return SampleNoise(seed, range(2), SHAPE).draw()


def run_diffusers(model, sched, steps, x, noises=None):
    sched.set_timesteps(steps)
    calls = 0
    with torch.no_grad():
        for k, n in enumerate(sched.timesteps):
            eps = model.unet(x, n.reshape(1).expand(x.shape[0]).to(torch.float64)).sample
            calls += 1
            extra = {} if noises is None else {"variance_noise": noises[k]}
            x = sched.step(eps, n, x, **extra).prev_sample
    ts = np.append((sched.timesteps.numpy().astype(np.float64) + 1) / N, 1.0 / N)
    return x, calls, ts


def run_ours(model, name, ts, x, rng=None, **opts):
    counter = CountedDenoiser(model, budget=len(ts) - 1)
    with torch.no_grad():
        out = get_solver(name).fn(counter, x, ts, model.noise, rng, **opts)
    return out, counter.count


def _compare(model, sched, steps, name, **opts):
    x = _x_start()
    ref, calls, ts = run_diffusers(model, sched, steps, x.clone())
    ours, count = run_ours(model, name, ts, x.clone(), **opts)
    rel = float((ours - ref).norm() / ref.norm())
    assert count == calls == steps
    assert rel < TOL, f"{name} {opts}: relative difference {rel:.2e}"
    return rel


# diffusers applies its lower_order_final below 15 steps: our rule "below_15".
@pytest.mark.parametrize("order,steps", [(1, 8), (2, 10), (2, 16), (3, 10), (3, 16)])
@pytest.mark.parametrize("algorithm,name", [("dpmsolver++", "dpmpp"), ("dpmsolver", "dpm_solver")])
def test_dpm_solver_multistep_matches_diffusers_scheduler(model, order, steps, algorithm, name):
    sched = diffusers.DPMSolverMultistepScheduler(**BETAS, solver_order=order, algorithm_type=algorithm,
                                                  solver_type="midpoint", final_sigmas_type="sigma_min",
                                                  lower_order_final=True)
    _compare(model, sched, steps, name, method="multistep", order=order, lower_order_final="below_15")


# diffusers' singlestep order list equals the DPM-Solver-fast split for odd budgets with
# lower_order_final=True, and for even ones with lower_order_final=False (with True and an even
# budget it ends [.., 1, 1] instead). Its evaluations sit on its own timesteps: outer_grid "fine".
# Order 3 is not compared: diffusers' inner stage of a 3-block uses the midpoint (order-2 "S")
# coefficient, the paper's DPM-Solver-3 the phi_2 one (its exactness is checked in test_solvers_exp).
@pytest.mark.parametrize("order,steps,lof", [(1, 7, True), (2, 9, True), (2, 10, False)])
@pytest.mark.parametrize("algorithm,name", [("dpmsolver++", "dpmpp"), ("dpmsolver", "dpm_solver")])
def test_dpm_solver_singlestep_matches_diffusers_scheduler(model, order, steps, lof, algorithm, name):
    sched = diffusers.DPMSolverSinglestepScheduler(**BETAS, solver_order=order, algorithm_type=algorithm,
                                                   solver_type="midpoint", final_sigmas_type="sigma_min",
                                                   lower_order_final=lof)
    _compare(model, sched, steps, name, method="singlestep", order=order, outer_grid="fine")


# UniPC lowers the order at the end for any number of steps: our rule "always".
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_bh1_and_bh2_match_diffusers_scheduler(model, order, variant):
    sched = diffusers.UniPCMultistepScheduler(**BETAS, solver_order=order, solver_type=variant, predict_x0=True,
                                              lower_order_final=True, final_sigmas_type="sigma_min")
    _compare(model, sched, 10, "unipc", order=order, variant=variant, lower_order_final="always")


# diffusers implements DEIS with the polynomial in log rho; our default basis "t" (the paper's tAB)
# is checked against an independent quadrature in test_solvers_exp.
@pytest.mark.parametrize("order,steps", [(1, 8), (2, 10), (3, 10), (3, 16)])
def test_deis_logrho_matches_diffusers_scheduler(model, order, steps):
    sched = diffusers.DEISMultistepScheduler(**BETAS, solver_order=order, lower_order_final=True)
    _compare(model, sched, steps, "deis", order=order, lower_order_final="below_15", basis="logrho")


@pytest.mark.parametrize("order,steps", [(1, 8), (2, 10), (2, 16)])
def test_sde_dpmpp_matches_diffusers_sde_dpmsolver_with_the_same_noise(model, order, steps):
    """Both sides get the same per-step noise: ours from rng.like, replayed into diffusers' variance_noise."""
    sched = diffusers.DPMSolverMultistepScheduler(**BETAS, solver_order=order, algorithm_type="sde-dpmsolver++",
                                                  solver_type="midpoint", final_sigmas_type="sigma_min",
                                                  lower_order_final=True)
    replay = SampleNoise(1, range(2), SHAPE)
    x = replay.draw()
    noises = [replay.draw() for _ in range(steps)]
    ref, calls, ts = run_diffusers(model, sched, steps, x.clone(), noises)
    rng = SampleNoise(1, range(2), SHAPE)
    ours, count = run_ours(model, "dpmpp_sde", ts, rng.draw(), rng, order=order, lower_order_final="below_15")
    assert count == calls == steps
    assert float((ours - ref).norm() / ref.norm()) < TOL


def test_every_first_order_solver_matches_diffusers_ddim(model):
    """diffusers DDIM (eta=0, no clipping, steps_offset=1, final alpha = alphas_cumprod[0]) vs every order-1 solver."""
    sched = diffusers.DDIMScheduler(**BETAS, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
                                    clip_sample=False)
    x = _x_start()
    sched.set_timesteps(10)
    assert int(sched.timesteps[-1]) == 1  # so the final step really goes to alphas_cumprod[0]
    ref, calls, ts = run_diffusers(model, sched, 10, x.clone())
    for name, opts in [("ddim", {}), ("dpmpp", {"order": 1}),
                       ("dpm_solver", {"method": "singlestep", "order": 1, "outer_grid": "fine"}),
                       ("unipc", {"order": 1, "corrector": False}), ("deis", {"order": 1}),
                       ("deis", {"order": 1, "basis": "logrho"})]:
        ours, count = run_ours(model, name, ts, x.clone(), **opts)
        assert count == calls == 10
        assert float((ours - ref).norm() / ref.norm()) < TOL, name
