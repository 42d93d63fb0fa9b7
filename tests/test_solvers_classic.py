"""Classical and stochastic samplers: convergence order, SDE moment convergence, NFE accounting, goldens.

Orders are fitted on the analytic gaussian (vp_linear, float64) against its closed-form ODE
solution, on a grid uniform in EDM sigma = sigma/alpha from 1.0 to 0.2: the pseudo/multistep
methods use uniform-step Adams-Bashforth weights, which are exact only on a grid uniform in the
variable they integrate in (EDM sigma), and 64-256 steps put every method in its asymptotic range.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import gaussian, solve_steps
from metrics.frechet import frechet_distance
from models.counter import BudgetExceeded
from common.errors import NfebenchError
from sampling.registry import get_solver
from sampling.seeds import SampleNoise
from sampling.timesteps import make_grid



# These tests build tensors with torch's default dtype; keep float64 local to this module.
pytestmark = pytest.mark.usefixtures("float64_default")


def sigma_grid(model, steps, s0=1.0, s1=0.2):
    return model.noise.t_of_edm_sigma(np.linspace(s0, s1, steps + 1))


def ode_err(model, solver, steps, **opts):
    ts = sigma_grid(model, steps)
    x, x_start, _, _ = solve_steps(model, solver, steps, grid="explicit", grid_opts={"ts": ts}, **opts)
    ref = model.ode_solution(x_start, float(ts[0]), float(ts[-1]))
    return float((x - ref).pow(2).mean().sqrt())


# (solver, options, theoretical order). PLMS is nominally 4th order (AB4); its 2nd-order pseudo-Heun
# warm-up bounds the asymptotic order by 3 in theory, but that term is ~10% of the error at 256 steps
# (compare f_pndm), so the fitted slope here is ~3.8. iPNDM warms up with an Euler step (local O(h^2)),
# which caps the global order at 2 for orders >= 2 -- its errors are still smaller at every NFE.
ORDERS = [("euler", {}, 1), ("heun", {}, 2), ("heun", {"final_euler": False}, 2),
          ("pndm", {"method": "s_pndm"}, 2), ("pndm", {"method": "plms"}, 4), ("pndm", {"method": "f_pndm"}, 4),
          ("ipndm", {"order": 1}, 1), ("ipndm", {"order": 2}, 2), ("ipndm", {"order": 3}, 2),
          ("ipndm", {"order": 4}, 2)]


@pytest.mark.parametrize("solver,opts,order", ORDERS, ids=[f"{s}-{o}" for s, o, _ in ORDERS])
def test_classic_solvers_fit_their_theoretical_ode_order(solver, opts, order):
    model = gaussian()
    spec = get_solver(solver)
    steps = [64, 128, 256]
    errs = [ode_err(model, solver, s, **opts) for s in steps]
    slope = -np.polyfit(np.log([spec.cost(s, **opts) for s in steps]), np.log(errs), 1)[0]
    assert abs(slope - order) <= 0.3, (solver, opts, slope, errs)


def test_higher_ipndm_order_is_more_accurate_at_low_nfe():
    model = gaussian()
    errs = [ode_err(model, "ipndm", 12, order=k) for k in (1, 2, 3, 4)]
    assert errs == sorted(errs, reverse=True), errs


def _moment_error(model, solver, steps, grid, n=1000, **opts):
    x, _, ts, counter = solve_steps(model, solver, steps, grid=grid, n=n, **opts)
    assert counter.count == get_solver(solver).cost(steps, **opts)
    mu, cov = model.marginal_moments(float(ts[-1]))
    f = x.reshape(len(x), -1).numpy()
    return frechet_distance(f.mean(0), np.cov(f, rowvar=False), mu, cov)


SDES = [("ddpm", {}, "time_uniform"), ("ddpm", {"variance": "fixed_large"}, "time_uniform"),
        ("score_sde_pc", {"n_corrector": 0}, "time_uniform"),
        ("score_sde_pc", {"n_corrector": 0, "predictor": "euler_maruyama"}, "time_uniform"),
        ("score_sde_pc", {"n_corrector": 1, "snr": 0.05}, "time_uniform"),
        ("euler", {"S_churn": 40}, "karras"), ("heun", {"S_churn": 40}, "karras")]


@pytest.mark.parametrize("solver,opts,grid", SDES, ids=[f"{s}-{o}" for s, o, _ in SDES])
def test_stochastic_classic_solvers_moment_error_shrinks_with_nfe(solver, opts, grid):
    """Fréchet distance between sample moments and the exact marginal at t_end shrinks with NFE."""
    model = gaussian()
    errs = [_moment_error(model, solver, s, grid, **opts) for s in (4, 16, 48)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < errs[0] / 8, errs
    assert errs[2] < 0.1, errs  # 1000 samples in 16 dims: the Monte-Carlo floor is ~0.01


SOLVER_OPTS = [("euler", {}), ("euler", {"S_churn": 5}), ("heun", {}), ("heun", {"final_euler": False}),
               ("heun", {"S_churn": 5}), ("ddpm", {}), ("pndm", {"method": "plms"}),
               ("pndm", {"method": "s_pndm"}), ("pndm", {"method": "f_pndm"}), ("ipndm", {"order": 4}),
               ("score_sde_pc", {}), ("score_sde_pc", {"n_corrector": 2}),
               ("score_sde_pc", {"n_corrector": 0, "predictor": "euler_maruyama"})]


@pytest.mark.parametrize("solver,opts", SOLVER_OPTS, ids=[f"{s}-{o}" for s, o in SOLVER_OPTS])
def test_classic_solvers_spend_exactly_their_cost_and_refuse_one_nfe_less(solver, opts):
    """steps(nfe) is the most steps that fit; the counter sees exactly cost(steps); one less NFE refuses."""
    spec = get_solver(solver)
    model = gaussian()
    for nfe in range(spec.min_nfe(**opts), 31):
        steps = spec.steps(nfe, **opts)
        assert steps >= 1 and spec.cost(steps, **opts) <= nfe < spec.cost(steps + 1, **opts), (nfe, steps)
    for steps in (1, 2, 3, 4, 7):
        x, _, _, counter = solve_steps(model, solver, steps, n=2, budget=spec.cost(steps, **opts), **opts)
        assert counter.count == spec.cost(steps, **opts) and torch.isfinite(x).all()
        with pytest.raises(BudgetExceeded):
            solve_steps(model, solver, steps, n=2, budget=spec.cost(steps, **opts) - 1, **opts)
    assert spec.steps(spec.min_nfe(**opts) - 1, **opts) < 1


def test_pndm_cost_follows_the_papers_nfe_rule():
    """PNDM paper: F-PNDM with S steps spends S + 9 evaluations (3 pseudo-RK4 steps of 4); PLMS/S-PNDM S + 1."""
    spec = get_solver("pndm")
    for s in range(3, 60):
        assert spec.cost(s, method="f_pndm") == s + 9
        assert spec.cost(s, method="plms") == spec.cost(s, method="s_pndm") == s + 1
    assert [spec.cost(s, method="f_pndm") for s in (1, 2)] == [4, 8]
    assert [spec.steps(n, method="f_pndm") for n in (3, 4, 11, 12, 13, 50)] == [0, 1, 2, 3, 4, 41]


def test_churn_off_is_deterministic_and_draws_nothing():
    model = gaussian()
    for solver in ("euler", "heun"):
        ts = make_grid(model.noise, 6, "karras")
        rng = SampleNoise(0, range(3), model.shape)
        x = float(model.noise.sigma(ts[0])) * rng.draw()
        a = get_solver(solver).fn(model, x, ts, model.noise, None)  # no rng: must not be touched
        b = get_solver(solver).fn(model, x, ts, model.noise, rng, S_churn=0.0)
        assert torch.equal(a, b)
        c = get_solver(solver).fn(model, x, ts, model.noise, rng, S_churn=20.0, S_tmin=0.5, S_tmax=5.0)
        assert not torch.allclose(a, c)


def test_churn_respects_schedule_range():
    model = gaussian(noise={"name": "vp_discrete"})
    ts = make_grid(model.noise, 5, "time_uniform")
    rng = SampleNoise(0, range(2), model.shape)
    with pytest.raises(NfebenchError, match="churn"):
        get_solver("euler").fn(model, rng.draw(), ts, model.noise, rng, S_churn=10.0)


def test_bad_classic_solver_options_are_refused():
    model = gaussian()
    with pytest.raises(NfebenchError):
        solve_steps(model, "pndm", 3, method="rk45")
    with pytest.raises(NfebenchError):
        solve_steps(model, "ipndm", 3, order=5)
    with pytest.raises(NfebenchError):
        solve_steps(model, "ddpm", 3, variance="learned")
    with pytest.raises(NfebenchError):
        solve_steps(model, "score_sde_pc", 3, predictor="ode")


def test_stochastic_samples_do_not_depend_on_batching():
    model = gaussian()
    for solver, opts in (("ddpm", {}), ("score_sde_pc", {}), ("heun", {"S_churn": 10})):
        whole, _, _, _ = solve_steps(model, solver, 5, n=4, **opts)
        spec, ts = get_solver(solver), make_grid(model.noise, 5, "logsnr")
        rng = SampleNoise(0, [2, 3], model.shape)
        part = spec.fn(model, float(model.noise.sigma(ts[0])) * rng.draw(), ts, model.noise, rng, **opts)
        assert torch.allclose(whole[2:], part, rtol=0, atol=1e-12)


# Regression goldens: computed once from this implementation after it matched the independent
# references (tests/test_vs_kdiffusion_ref.py, tests/test_vs_diffusers_classic.py) and the orders above;
# regenerated when SampleNoise began drawing float32 and casting (issue 10: seeds independent of dtype).
# 4 samples (seed 0), gaussian vp_linear, 6 steps on the logsnr grid: (mean, mean |x|).
GOLDEN = {
    "euler": (-0.09433695955048113, 0.2993310919996591),
    "euler_churn": (-0.05879648142673912, 0.3194048565898352),
    "heun": (-0.1278024599531662, 0.4609528100820678),
    "heun_churn": (-0.09614648457852579, 0.4750347728413822),
    "ddpm_small": (-0.04783962521656321, 0.31457593449062005),
    "ddpm_large": (-0.0020867337182632895, 0.5025311131247266),
    "plms": (-0.10997894138306386, 0.36482699541228286),
    "s_pndm": (-0.10279840176542511, 0.3276347757935473),
    "f_pndm": (-0.11099037772867792, 0.3678265307112806),
    "ipndm2": (-0.10278034035961697, 0.3275796368770117),
    "ipndm4": (-0.1101630586398738, 0.36546718994866817),
    "pc_rd": (0.04652232596444604, 0.5367298752095645),
    "pc_em": (-0.011076499521170943, 0.7238802287939023),
    "f_pndm_time": (-0.1113019902651948, 0.3688066265499574),
    "ts_ddim": (-0.09024424896524127, 0.32398395850109385),
    "ts_ipndm": (-0.10708106295748725, 0.37612984146393896),
}


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_classic_solvers_reproduce_their_golden_sample_moments(key):
    solver, opts = GOLDEN_CASES[key]
    x, _, _, _ = solve_steps(gaussian(), solver, 6, n=4, **opts)
    mean, mean_abs = GOLDEN[key]
    assert float(x.mean()) == pytest.approx(mean, rel=1e-9, abs=1e-12)
    assert float(x.abs().mean()) == pytest.approx(mean_abs, rel=1e-9)


GOLDEN_CASES = {
    "euler": ("euler", {}), "euler_churn": ("euler", {"S_churn": 10}), "heun": ("heun", {}),
    "heun_churn": ("heun", {"S_churn": 10, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.007}),
    "ddpm_small": ("ddpm", {}), "ddpm_large": ("ddpm", {"variance": "fixed_large"}),
    "plms": ("pndm", {"method": "plms"}), "s_pndm": ("pndm", {"method": "s_pndm"}),
    "f_pndm": ("pndm", {"method": "f_pndm"}), "ipndm2": ("ipndm", {"order": 2}), "ipndm4": ("ipndm", {"order": 4}),
    "pc_rd": ("score_sde_pc", {}), "pc_em": ("score_sde_pc", {"predictor": "euler_maruyama", "n_corrector": 0}),
    "f_pndm_time": ("pndm", {"method": "f_pndm", "midpoint": "time"}),
    "ts_ddim": ("time_shift", {"base": "ddim", "window": 2, "data_var": 0.3}),
    "ts_ipndm": ("time_shift", {"base": "ipndm", "window": 2, "data_var": 0.3}),
}


# --- Time-Shift Sampler -------------------------------------------------------------------------

@pytest.mark.parametrize("base,plain,opts", [("ddim", "ddim", {}), ("ipndm", "ipndm", {"order": 4})])
def test_time_shift_without_window_is_its_base(base, plain, opts):
    model = gaussian()
    a, _, _, ca = solve_steps(model, "time_shift", 8, n=4, base=base, window=0)
    b, _, _, _ = solve_steps(model, plain, 8, n=4, **opts)
    assert torch.allclose(a, b, rtol=0, atol=1e-13) and ca.count == 8


def _ref_time_shift_ddim(model, x, ts, window, width, data_var):
    """One sample at a time, in plain floats: shift t_i to the best-matching candidate, then DDIM."""
    ns = model.noise
    out = []
    for xb in x:
        xb = xb[None]
        t_cur = float(ts[0])
        for i in range(len(ts) - 1):
            if i > 0:
                h = min(ts[i - 1] - ts[i], ts[i] - ts[i + 1])
                cands = [float(ts[i] + width * h * k / window) for k in range(-window, window + 1)]
                v = float(xb.var())
                t_cur = min(cands, key=lambda c: abs(v - (float(ns.alpha(c)) ** 2 * data_var + float(ns.sigma(c)) ** 2)))
            x0 = model(xb, t_cur)
            eps = (xb - float(ns.alpha(t_cur)) * x0) / float(ns.sigma(t_cur))
            xb = float(ns.alpha(ts[i + 1])) * x0 + float(ns.sigma(ts[i + 1])) * eps
        out.append(xb[0])
    return torch.stack(out)


@pytest.mark.parametrize("data_var", [0.0, 0.3])
def test_time_shift_matches_per_sample_reference(data_var):
    model = gaussian()
    x, x_start, ts, counter = solve_steps(model, "time_shift", 7, n=12, base="ddim", window=3, width=0.5,
                                    data_var=data_var, grid="time_uniform")
    ref = _ref_time_shift_ddim(model, x_start, ts, 3, 0.5, data_var)
    assert torch.allclose(x, ref, rtol=1e-10, atol=1e-12)
    plain, _, _, _ = solve_steps(model, "ddim", 7, n=12, grid="time_uniform")
    assert not torch.allclose(x, plain, atol=1e-6)  # the shift did act
    assert counter.count == get_solver("time_shift").cost(7, window=3) == 1 + 6 * 7


def test_time_shift_is_batch_independent_and_budgeted():
    model = gaussian()
    spec = get_solver("time_shift")
    whole, _, _, counter = solve_steps(model, "time_shift", 6, n=6, base="ipndm", window=2, data_var=0.3,
                                 budget=spec.cost(6, window=2))
    ts = make_grid(model.noise, 6, "logsnr")
    rng = SampleNoise(0, [4, 5], model.shape)
    part = spec.fn(model, float(model.noise.sigma(ts[0])) * rng.draw(), ts, model.noise, rng, base="ipndm",
                   window=2, data_var=0.3)
    assert torch.allclose(whole[4:], part, rtol=0, atol=1e-12)
    assert counter.count == spec.cost(6, window=2) == 1 + 5 * 5
    assert spec.describe(6, window=2)["nfe_paper_convention"] == 6
    with pytest.raises(BudgetExceeded):
        solve_steps(model, "time_shift", 6, n=2, window=2, budget=spec.cost(6, window=2) - 1)


def test_discrete_spacing_refuses_continuous_schedules_and_bad_rules():
    with pytest.raises(NfebenchError, match="vp_discrete"):
        make_grid(gaussian().noise, 5, "discrete")
    disc = gaussian(noise={"name": "vp_discrete"}).noise
    with pytest.raises(NfebenchError, match="spacing"):
        make_grid(disc, 5, "discrete", spacing="cosine")
    ts = make_grid(disc, 4, "discrete", spacing="leading", steps_offset=1)
    assert np.allclose(ts * 1000 - 1, [751, 501, 251, 1, 0])
