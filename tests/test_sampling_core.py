"""Core sampling on the analytic models: convergence order, equivalences, NFE accounting, adapters, seeds."""
import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from helpers import fitted_order, gaussian, solve_steps
from launch.run import load_model, plan, sample_batches
from models.counter import BudgetExceeded, CountedDenoiser
from models.registry import build_model
from common.errors import NfebenchError
from sampling.registry import get_solver
from sampling.seeds import SampleNoise


def test_gaussian_closed_form_ode_matches_numerical_solve():
    m = gaussian(shape=(1, 3, 3))
    ns = m.noise
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * float(ns.sigma(1.0))
    t0, t1 = 1.0, 1e-3

    def rhs(t, y):  # PF-ODE in native VP coordinates: dx/dt = f x - g^2/2 * score
        xt = torch.as_tensor(y).reshape(x.shape)
        a, s = float(ns.alpha(t)), float(ns.sigma(t))
        beta = ns.beta_min + t * (ns.beta_max - ns.beta_min)
        score = -(xt - a * m(xt, t)) / s**2
        return (-0.5 * beta * xt - 0.5 * beta * score).reshape(-1).numpy()

    num = solve_ivp(rhs, (t0, t1), x.reshape(-1).numpy(), method="DOP853", rtol=1e-11, atol=1e-11).y[:, -1]
    exact = m.ode_solution(x, t0, t1).reshape(-1).numpy()
    np.testing.assert_allclose(exact, num, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("solver,opts,order,cost", [
    ("ddim", {}, 1, lambda n: n),
    ("euler", {}, 1, lambda n: n),
    ("heun", {}, 2, lambda n: 2 * n - 1),
    ("dpmpp", {"order": 2, "lower_order_final": "never"}, 2, lambda n: n),
])
def test_core_solvers_fit_their_ode_order_per_counted_nfe(solver, opts, order, cost):
    got = fitted_order(gaussian(), solver, (16, 32, 64), cost=cost, **opts)
    assert abs(got - order) <= 0.3, f"{solver}: fitted order {got:.3f}, expected {order}"


def test_dpmpp_first_order_equals_ddim():
    m = gaussian()
    a = solve_steps(m, "dpmpp", 7, order=1)[0]
    b = solve_steps(m, "ddim", 7, eta=0.0)[0]
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_ddim_is_euler_in_edm_coordinates():
    # Known identity (Karras et al. 2022, Sec. 3): deterministic DDIM is Euler on x/alpha vs sigma/alpha.
    m = gaussian()
    torch.testing.assert_close(solve_steps(m, "ddim", 9, grid="karras")[0],
                               solve_steps(m, "euler", 9, grid="karras")[0], rtol=1e-11, atol=1e-11)


def test_ddim_eta_is_stochastic_and_uses_per_sample_noise():
    m = gaussian()
    a = solve_steps(m, "ddim", 10, eta=1.0, seed=0)[0]
    b = solve_steps(m, "ddim", 10, eta=1.0, seed=1)[0]
    c = solve_steps(m, "ddim", 10, eta=0.0, seed=0)[0]
    assert not torch.allclose(a, b) and not torch.allclose(a, c)
    torch.testing.assert_close(a, solve_steps(m, "ddim", 10, eta=1.0, seed=0)[0], rtol=0, atol=0)


@pytest.mark.parametrize("solver,opts,rule", [
    ("ddim", {}, lambda nfe: nfe),
    ("euler", {}, lambda nfe: nfe),
    ("dpmpp", {}, lambda nfe: nfe),
    ("heun", {"final_euler": True}, lambda nfe: 2 * ((nfe + 1) // 2) - 1),
    ("heun", {"final_euler": False}, lambda nfe: 2 * (nfe // 2)),
])
def test_counted_nfe_follows_the_solver_rule(solver, opts, rule):
    spec = get_solver(solver)
    m = gaussian()
    for nfe in range(1, 31):
        steps = spec.steps(nfe, **opts)
        if steps < 1:
            assert rule(nfe) == 0
            continue
        _, _, _, counter = solve_steps(m, solver, steps, n=2, budget=nfe, **opts)
        assert counter.count == rule(nfe) == spec.cost(steps, **opts) <= nfe


def test_heun_nfe10_takes_5_steps_and_9_evaluations():
    spec = get_solver("heun")
    assert spec.steps(10) == 5 and spec.cost(5) == 9


def test_budget_overrun_is_an_error():
    m = gaussian()
    with pytest.raises(BudgetExceeded, match="budget of 9 NFE"):
        solve_steps(m, "heun", 5, budget=9, final_euler=False)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_parameterisation_adapters_give_the_same_samples(prediction):
    base = solve_steps(gaussian(), "dpmpp", 8)[0]
    other = solve_steps(gaussian(prediction=prediction), "dpmpp", 8)[0]
    torch.testing.assert_close(other, base, rtol=1e-10, atol=1e-10)
    ns = {"name": "edm"}  # v-prediction's general form must hold when alpha^2 + sigma^2 != 1 too
    torch.testing.assert_close(solve_steps(gaussian(prediction=prediction, noise=ns), "heun", 6)[0],
                               solve_steps(gaussian(noise=ns), "heun", 6)[0], rtol=1e-10, atol=1e-10)


def test_counter_flags_the_first_nonfinite_call():
    class Blows:
        noise = gaussian().noise

        def __call__(self, x, t, cond=None):
            return x / 0.0 if t < 0.5 else x

    c = CountedDenoiser(Blows(), None)
    for t in (0.9, 0.7, 0.4, 0.2):
        c(torch.ones(2, dtype=torch.float64), t)
    assert c.first_nonfinite_call() == 3


def _cfg(**kw):
    cfg = {"nfe": 10, "num_samples": 64, "batch_size": 64, "seed": 5, "sample_offset": 0, "t_end": None,
           "dtype": None, "model": {"family": "digits", "name": "digits", "dtype": "float64",
                                    "noise_schedule": {"name": "vp_linear"}},
           "solver": {"name": "ddim", "eta": 1.0}, "schedule": {"name": "time_uniform"}}
    cfg.update(kw)
    return cfg


def _samples(cfg):
    out = {}
    sample_batches(cfg, plan(cfg), load_model(cfg), torch.device("cpu"),
                   lambda x, x0, idx: out.update({i: (x[k], x0[k]) for k, i in enumerate(idx)}))
    return out


@pytest.mark.parametrize("solver", [{"name": "ddim", "eta": 1.0}, {"name": "dpmpp", "order": 2}])
def test_samples_do_not_depend_on_batch_size_or_sharding(solver):
    ref = _samples(_cfg(batch_size=64, solver=solver))
    for bs in (1, 7):
        got = _samples(_cfg(batch_size=bs, solver=solver))
        for i in range(64):
            assert torch.equal(got[i][1], ref[i][1]), "initial noise must be bit-identical"
            torch.testing.assert_close(got[i][0], ref[i][0], rtol=1e-12, atol=1e-12)
    # Two shards of disjoint index ranges reproduce the single pass.
    shards = {**_samples(_cfg(num_samples=20, solver=solver)),
              **_samples(_cfg(num_samples=44, sample_offset=20, solver=solver))}
    for i in range(64):
        torch.testing.assert_close(shards[i][0], ref[i][0], rtol=1e-12, atol=1e-12)


def test_noise_stream_is_a_function_of_seed_and_index():
    a = SampleNoise(3, [5, 6], (4,)).draw()
    b = SampleNoise(3, [6], (4,)).draw()
    c = SampleNoise(4, [6], (4,)).draw()
    assert torch.equal(a[1], b[0]) and not torch.equal(b, c)


def test_plan_rejects_bad_budgets():
    with pytest.raises(NfebenchError, match="below the minimum"):
        plan(_cfg(solver={"name": "heun", "final_euler": False}, nfe=1))
    with pytest.raises(NfebenchError, match="needs 5 NFE"):
        plan(_cfg(nfe=4, schedule={"name": "explicit", "ts": [1.0, 0.8, 0.5, 0.3, 0.1, 0.01]}))
    with pytest.raises(NfebenchError, match="nfe must be an integer"):
        plan(_cfg(nfe=0))
    with pytest.raises(NfebenchError, match="unknown solver"):
        plan(_cfg(solver={"name": "nope"}))


def test_digits_denoiser_is_the_exact_posterior_mean():
    m = build_model({"family": "digits", "noise_schedule": {"name": "edm"}})
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = 0.7
    c = torch.as_tensor(m.centers)
    v = m.std**2 + s * s
    logp = -((x.reshape(3, 1, 64) - c) ** 2).sum(-1) / (2 * v)
    w = torch.softmax(logp, 1)
    expect = (w[:, :, None] * (c + m.std**2 / v * (x.reshape(3, 1, 64) - c))).sum(1)
    torch.testing.assert_close(m.denoise_edm(x, s).reshape(3, 64), expect, rtol=1e-10, atol=1e-10)
