"""The classic solvers' in-place loops and per-run plans: the caller's x is never written, a plan built
for one (schedule, grid, options) is never served for another, and a bad option names the valid ones."""
from __future__ import annotations

import pytest
import torch

from common.errors import NfebenchError
from helpers import gaussian
from sampling.registry import SOLVERS, get_solver
from sampling.seeds import SampleNoise
from sampling.timesteps import make_grid

CASES = [("ddim", {}), ("ddim", {"eta": 1.0}), ("ddim", {"clip_x0": 1.0}), ("ddpm", {}),
         ("ddpm", {"variance": "fixed_large"}), ("euler", {}), ("euler", {"S_churn": 5}), ("heun", {}),
         ("heun", {"final_euler": False}), ("heun", {"S_churn": 5}), ("pndm", {"method": "plms"}),
         ("pndm", {"method": "f_pndm"}), ("ipndm", {"order": 1}), ("ipndm", {"order": 4}), ("score_sde_pc", {}),
         ("time_shift", {}), ("time_shift", {"base": "ipndm"})]


def _run(model, solver, ts, opts):
    rng = SampleNoise(3, range(4), model.shape, dtype=torch.float64)
    x = float(model.noise.sigma(ts[0])) * rng.draw()
    before = x.clone()
    out = get_solver(solver).fn(model, x, ts, model.noise, rng, **opts)
    assert torch.equal(x, before), "the solver wrote the caller's x"
    assert out.data_ptr() != x.data_ptr() and torch.isfinite(out).all()
    return out


@pytest.mark.parametrize("noise", ["vp_linear", "edm"])
@pytest.mark.parametrize("solver,opts", CASES, ids=[f"{s}-{o}" for s, o in CASES])
def test_loops_leave_the_start_alone_and_plans_follow_their_inputs(solver, opts, noise):
    model = gaussian(noise={"name": noise})
    ts, finer_ts = make_grid(model.noise, 7, "logsnr"), make_grid(model.noise, 9, "logsnr")
    first = _run(model, solver, ts, opts)
    finer = _run(model, solver, finer_ts, opts)
    assert torch.equal(_run(model, solver, ts, opts), first)  # the cached plan is this grid's own
    # a fresh schedule object of the same kind gets its own plan and the same numbers
    assert torch.equal(_run(gaussian(noise={"name": noise}), solver, ts, opts), first)
    assert not torch.equal(finer, first)
    if noise == "vp_linear":  # the same grid on another schedule: another plan
        other = gaussian(noise={"name": "vp_linear", "beta_max": 10.0})
        assert not torch.equal(_run(other, solver, ts, opts), first)
        assert torch.equal(_run(model, solver, ts, opts), first)


BAD = [("ddpm", {"variance": "learned"}, "unknown ddpm variance 'learned'; valid: fixed_small, fixed_large"),
       ("pndm", {"method": "rk45"}, "unknown pndm method 'rk45'; valid: plms, s_pndm, f_pndm"),
       ("pndm", {"method": "f_pndm", "midpoint": "edge"},
        "unknown pndm midpoint 'edge'; valid: sigma, time, diffusers"),
       ("ipndm", {"order": 5}, "unknown ipndm order 5; valid: 1, 2, 3, 4"),
       ("heun", {"final_step": "euler"}, "unknown heun final_step 'euler'; valid: None, edm"),
       ("time_shift", {"base": "heun"}, "unknown time_shift base 'heun'; valid: ddim, ipndm"),
       ("score_sde_pc", {"predictor": "ode"}, "unknown score_sde_pc predictor 'ode'; valid: reverse_diffusion, "
                                              "euler_maruyama")]


@pytest.mark.parametrize("solver,opts,message", BAD, ids=[s for s, _, _ in BAD])
def test_bad_choices_name_the_valid_ones(solver, opts, message):
    with pytest.raises(NfebenchError) as err:
        _run(gaussian(), solver, make_grid(gaussian().noise, 4, "logsnr"), opts)
    assert str(err.value) == message


def test_registries_answer_by_name():
    from sampling.schedules import NOISE_SCHEDULES, make_noise_schedule
    from sampling.timesteps import GRIDS

    assert {"ddim", "euler", "heun", "pndm", "ipndm", "time_shift"} <= set(SOLVERS.names())
    assert get_solver("heun") is SOLVERS.get("heun") and get_solver("heun").name == "heun"
    assert make_noise_schedule("ve").name == "ve" and make_noise_schedule("ve").describe()["name"] == "ve"
    assert set(NOISE_SCHEDULES) == {"edm", "ve", "vp_cosine", "vp_discrete", "vp_linear"}
    assert "karras" in GRIDS and "nope" not in GRIDS
    for registry, what in ((SOLVERS, "solver"), (GRIDS, "time-step schedule"), (NOISE_SCHEDULES, "noise schedule")):
        with pytest.raises(NfebenchError, match=f"^unknown {what} 'nope'; valid: "):
            registry.get("nope")
    with pytest.raises(NfebenchError, match="^unknown beta schedule 'quad'; valid: linear, scaled_linear, cosine$"):
        make_noise_schedule("vp_discrete", betas="quad")
    with pytest.raises(NfebenchError, match="^unknown timestep spacing 'even'; valid: leading, linspace, trailing$"):
        make_grid(make_noise_schedule("vp_discrete"), 4, "discrete", spacing="even")
