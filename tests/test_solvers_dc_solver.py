"""DC-Solver (sampling/solvers/dc_solver.py): UniPC at rho = 1, the compensation, the fitted ratios against the
exact solution, the calibration stage through launch.py, and the cascade polynomial regression (cpr.py).

Fits here are tiny (few noises, few AdamW iterations, 4x4 gaussian); the README's numbers use the defaults.
"""
import json

import numpy as np
import pytest
import torch

from models.counter import CountedDenoiser
from models.registry import build_model
from sampling.registry import get_solver
from sampling.seeds import SampleNoise
from sampling.solvers import cpr
from sampling.solvers.dc_solver import compensation
from sampling.timesteps import make_grid
from helpers import gaussian, launch, solve_steps

DC = get_solver("dc_solver")
CHEAP = ["solver.iterations=3", "solver.n_noises=2"]


def test_compensation_is_the_interpolant_at_t_prime():
    t = [1.0, 0.8, 0.55, 0.35, 0.2]
    p = lambda s: 2.0 - 3.0 * s + 5.0 * s * s  # noqa: E731  (a quadratic: dc_order 2 interpolates it exactly)
    for k, rho in ((2, 0.7), (3, 1.3), (4, 1.0)):
        w = compensation(t, k, 2, rho)
        t_prime = rho * t[k] + (1 - rho) * t[k - 1]
        assert sum(wj * p(t[k - j]) for j, wj in enumerate(w)) == pytest.approx(p(t_prime), rel=1e-12)
    assert compensation(t, 3, 1, 1.0) == pytest.approx([1.0, 0.0], abs=1e-15)
    w = compensation(t, 3, 2, torch.tensor(0.5, dtype=torch.float64, requires_grad=True))
    assert w[0].requires_grad  # the fit differentiates through the weights


@pytest.mark.parametrize("opts", [{}, {"order": 2, "variant": "bh2"}, {"corrector": False}, {"dc_order": 3}])
def test_all_ratios_one_is_unipc_bit_for_bit(opts):
    for model in (gaussian(), build_model({"family": "digits", "noise_schedule": {"name": "vp_linear"}})):
        unipc_opts = {k: v for k, v in opts.items() if k != "dc_order"}
        ref = solve_steps(model, "unipc", 7, **unipc_opts)[0]
        ones = solve_steps(model, "dc_solver", 7, rho_source="ones", **opts)[0]
        fitted_ones = solve_steps(model, "dc_solver", 7, calibration={"rho": np.ones(7)}, **opts)[0]
        assert torch.equal(ones, ref) and torch.equal(fitted_ones, ref)
        moved = solve_steps(model, "dc_solver", 7, calibration={"rho": np.array([1, 1, 1, 0.9, 1, 1, 1.0])}, **opts)[0]
        assert not torch.equal(moved, ref)


@pytest.mark.slow  # launch.py runs (a few seconds each on an idle machine)
def test_ratio_one_through_launch_is_unipc(tmp_path):
    recs, samples = {}, {}
    for name, extra in (("unipc", []), ("dc_solver", ["solver.rho_source=ones"])):
        out = tmp_path / name
        r = launch("model=digits", "metrics=none", f"solver={name}", "schedule=time_uniform", "nfe=6", "num_samples=40",
                   "save_samples=npz", f"hydra.run.dir={out}", *extra)
        assert r.returncode == 0, r.stderr[-2000:]
        recs[name] = json.loads((out / "record.json").read_text())
        samples[name] = [np.load(p)["images"] for p in sorted((out / "samples").glob("*.npz"))]
    assert recs["dc_solver"]["nfe"] == recs["unipc"]["nfe"] == {"requested": 6, "counted": 6, "network_evals": 6}
    assert len(samples["unipc"]) > 0
    for a, b in zip(samples["unipc"], samples["dc_solver"]):
        np.testing.assert_array_equal(a, b)


def _endpoint_errors(model, steps, grid, **fit):
    """(UniPC, DC-Solver) RMS distance to the exact ODE solution on 32 noises not used by the fit."""
    ts = make_grid(model.noise, steps, grid)
    need = DC.calibration(ts, model.noise, torch.float64, **fit)
    counter = CountedDenoiser(model, None)
    rho = need.compute(counter, "cpu")
    assert counter.count > steps  # the fit's own model calls, with gradients through the corrector's
    x = float(model.noise.sigma(ts[0])) * SampleNoise(1, range(32), model.shape, dtype=torch.float64).draw()
    exact = model.ode_solution(x, float(ts[0]), float(ts[-1]))
    unipc = get_solver("unipc").fn(CountedDenoiser(model, steps), x, ts, model.noise)
    dc = DC.fn(CountedDenoiser(model, steps), x, ts, model.noise, calibration=rho, **fit)
    return [float((s - exact).square().mean().sqrt()) for s in (unipc, dc)], rho["rho"]


@pytest.mark.parametrize("family, steps, grid, fit, gain", [
    ("gaussian", 6, "logsnr", {"iterations": 20}, 0.8),
    ("digits", 5, "logsnr", {"iterations": 8, "n_noises": 6}, 0.9),
])
def test_fitted_ratios_lower_the_endpoint_error(family, steps, grid, fit, gain):
    shape = {"shape": [1, 4, 4]} if family == "gaussian" else {}
    model = build_model({"family": family, **shape, "noise_schedule": {"name": "vp_linear"}})
    (unipc, dc), rho = _endpoint_errors(model, steps, grid, **fit)
    assert rho[:2].tolist() == [1.0, 1.0] and np.all(rho[2:] != 1.0)  # the first dc_order steps are not compensated
    assert dc < gain * unipc, (unipc, dc, rho)


# Golden full loop: 4x4 gaussian, vp_linear, logsnr grid, 6 steps, x_noise() (helpers), fixed ratios; values from
# this implementation (dc_solver.py at its first commit), whose rho = 1 path is unipc's (tested bit for bit above).
GOLDEN_RHO = [1.0, 1.0, 0.9, 1.2, 0.8, 1.1]
GOLDEN = (-0.1050710620812161, 0.6552536823603177)


def test_golden_full_loop():
    from helpers import x_noise

    model = gaussian()
    ts = make_grid(model.noise, 6, "logsnr")
    x = float(model.noise.sigma(ts[0])) * x_noise(model.shape)
    out = DC.fn(CountedDenoiser(model, 6), x, ts, model.noise, calibration={"rho": np.array(GOLDEN_RHO)})
    assert (float(out.mean()), float(out.abs().mean())) == pytest.approx(GOLDEN, rel=1e-9)


def _record(path):
    return json.loads((path / "record.json").read_text())


@pytest.mark.slow  # launch.py runs (a few seconds each on an idle machine)
def test_calibrate_only_then_cache_hit_then_require_without_cache(tmp_path):
    common = ["model=gaussian", "solver=dc_solver", "nfe=5", "num_samples=16", *CHEAP]
    r = launch(*common, "calibrate_only=true", f"calibration.dir={tmp_path / 'cal'}", f"hydra.run.dir={tmp_path / 'a'}")
    assert r.returncode == 0, r.stderr[-2000:]
    first = _record(tmp_path / "a")
    assert first["status"] == "calibrated" and not first.get("metrics")
    cal = first["calibration"]["dc_ratios"]
    # 5 steps; 3 compensated, 3 iterations each, 2 of them through the corrector's model call
    assert cal["status"] == "computed" and cal["nfe"] == 5 + 2 * 3
    r = launch(*common, f"calibration.dir={tmp_path / 'cal'}", f"hydra.run.dir={tmp_path / 'b'}")
    assert r.returncode == 0, r.stderr[-2000:]
    second = _record(tmp_path / "b")
    assert second["calibration"]["dc_ratios"]["status"] == "hit" and second["calibration"]["dc_ratios"]["nfe"] == 11
    assert second["nfe"]["counted"] == 5  # sampling NFE apart from the calibration's
    rho = np.load(second["calibration"]["dc_ratios"]["file"])["rho"]
    assert rho.shape == (5,) and rho[0] == rho[1] == 1.0
    r = launch(*common, "calibration.mode=require", f"calibration.dir={tmp_path / 'empty'}",
               f"hydra.run.dir={tmp_path / 'c'}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("nfebench: error: calibration 'dc_ratios' is not cached")
    assert not (tmp_path / "c" / "record.json").exists()


@pytest.mark.parametrize("override, message", [
    ("solver.rho_source=guess", "unknown dc_solver rho_source 'guess'; valid: fit, predict, ones"),
    ("solver.dc_order=4", "solver.dc_order must be 1, 2 or 3"),
    ("solver.iterations=0", "solver.iterations must be an integer >= 1; got 0"),
    ("solver.lr=-1", "solver.lr must be a number > 0; got -1"),
    ("solver.rho_source=predict solver.cpr_nfes=[5]", "solver.rho_source=predict needs solver.cpr_nfes"),
    ("solver.rho_source=predict solver.cpr_nfes=[4,6] schedule=logsnr", "dc_solver rho_source=predict regresses over solver.cpr_grid"),
])
def test_bad_options_fail_in_one_line(tmp_path, override, message):
    r = launch("model=gaussian", "solver=dc_solver", "nfe=6", *override.split(), f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("nfebench: error: ")
    assert message in r.stderr
    assert not (tmp_path / "run" / "record.json").exists()


def test_cascade_regression_predicts_as_the_reference_code():
    # The reference's cascade_polynomial_regression (wl-zhao/DC-Solver, diffusers/src/diffusers/schedulers/
    # scheduling_dcsolver_multistep.py) run once on CPU with these synthetic coefficients (not its SD 2.1 file)
    coeffs = np.linspace(-1.0, 1.0, 36) ** 3
    assert cpr.predict(coeffs, 6, 7.5).tolist() == pytest.approx(
        [1, 1, -0.5492755029883383, -0.24745049167476524, 0.2431572021460966, 0.9677058752186588], rel=1e-12)
    assert cpr.predict(coeffs, 10, 3.0)[[0, 1, 2, 9]].tolist() == pytest.approx(
        [1, 1, -0.3429415653061225, 1.127755102040816], rel=1e-12)


def test_cascade_fit_recovers_a_cascade_polynomial():
    truth = np.random.default_rng(0).standard_normal((4, 3, 3))
    data = {(g, n): cpr.predict(truth, n, g) for g in (2.0, 5.0, 7.5, 9.0) for n in (6, 8, 10, 12, 15)}
    got = cpr.fit(data, dc_order=2, degree=3)
    assert got.shape == (4, 3, 3)
    for g, n in ((4.0, 7), (7.5, 20)):  # unseen settings
        np.testing.assert_allclose(cpr.predict(got, n, g), cpr.predict(truth, n, g), rtol=1e-8, atol=1e-8)
    one_scale = cpr.fit({(0.0, n): v for (g, n), v in data.items() if g == 5.0}, dc_order=2)
    np.testing.assert_allclose(cpr.predict(one_scale, 9, 0.0), cpr.predict(truth, 9, 5.0), rtol=1e-8, atol=1e-8)


@pytest.mark.slow  # launch.py runs (a few seconds each on an idle machine)
def test_predicted_ratios_serve_unseen_nfe_from_one_calibration(tmp_path):
    common = ["model=gaussian", "solver=dc_solver", "solver.rho_source=predict", "solver.cpr_nfes=[4,5,6]",
              "num_samples=16", f"calibration.dir={tmp_path / 'cal'}", *CHEAP]
    recs = []
    for nfe in (7, 9):
        r = launch(*common, f"nfe={nfe}", f"hydra.run.dir={tmp_path / str(nfe)}")
        assert r.returncode == 0, r.stderr[-2000:]
        recs.append(_record(tmp_path / str(nfe))["calibration"]["dc_ratios"])
    assert [c["status"] for c in recs] == ["computed", "hit"] and recs[0]["key"] == recs[1]["key"]
    stored = np.load(recs[0]["file"])
    assert stored["cpr_coeffs"].shape == (4, 3, 3) and sorted(k for k in stored.files if k.startswith("rho_")) == [
        "rho_4", "rho_5", "rho_6"]
