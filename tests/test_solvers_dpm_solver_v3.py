"""DPM-Solver-v3 (sampling/solvers/dpm_solver_v3.py) and its empirical model statistics (sampling/solvers/ems.py)."""
import json

import numpy as np
import pytest
import torch

from common.errors import NfebenchError
from models.counter import CountedDenoiser
from models.registry import build_model
from sampling.registry import get_solver
from sampling.solvers import ems
from sampling.solvers.dpm_solver_v3 import derivative_weights
from sampling.timesteps import make_grid

from helpers import gaussian, launch, solve_steps


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def digits():
    return build_model({"family": "digits", "noise_schedule": {"name": "vp_linear"}})


def synthetic_ems(model, points=41, shape=(1, 4, 4)):
    """Smooth made-up l, s, b on the grid from t = 1 to 1e-3 (any smooth statistics give an exact rewrite of
    the ODE; these are far from the model's, so they test the update, not the estimator)."""
    lam = np.linspace(float(model.noise.lam(1.0)), float(model.noise.lam(1e-3)), points)[:, None]
    k = np.arange(int(np.prod(shape)))[None] * 0.37
    arrays = {"l": 1 + 0.3 * np.sin(0.5 * lam + k), "s": 0.2 * np.cos(0.3 * lam + 2 * k),
              "b": 0.05 * np.sin(0.7 * lam - k)}
    return {**{n: v.reshape(points, *shape) for n, v in arrays.items()}, "lambdas": lam[:, 0]}


def rel_error(model, steps, **opts):
    x, x_start, ts, counter = solve_steps(model, "dpm_solver_v3", steps, n=8, **opts)
    assert counter.count == steps  # the corrector reuses the next evaluation
    ref = model.ode_solution(x_start, float(ts[0]), float(ts[-1]))
    return float((x - ref).norm() / ref.norm())


# ---- the estimator --------------------------------------------------------------------------------------------

def exact_gaussian_l(model, lam):
    """diag(sigma^2 (alpha^2 Sigma + sigma^2 I)^-1) = diag(U diag(s^2 / (var + s^2)) U^T), s = e^-lambda."""
    s2 = np.exp(-2 * lam)
    return np.einsum("ij,j,ij->i", model.basis, s2 / (model.var + s2), model.basis)


def test_hutchinson_l_converges_to_the_closed_form_on_gaussian():
    model = gaussian()
    lam = np.array([-2.0, 0.0, 2.0])
    errors = {}
    for n in (32, 2048):
        got = ems.estimate(CountedDenoiser(model, None), lam, samples=n, probes=1, seed=0, batch=n)["l"]
        errors[n] = max(np.abs(got[i].ravel() - exact_gaussian_l(model, lam[i])).max() for i in range(3))
    # the Jacobian of a Gaussian's denoiser is constant: the error is the probes' alone, ~ 1/sqrt(n)
    assert errors[2048] < 0.01 and errors[32] / errors[2048] > 4, errors


def test_hutchinson_l_matches_the_exact_jacobian_diagonal_on_digits():
    model, lam, n, probes = digits(), 0.5, 4, 600
    got = ems.estimate(CountedDenoiser(model, None), np.array([lam]), samples=n, probes=probes, seed=1, batch=n)["l"][0]
    # the estimator's samples: data, then noise, from its seed (ems.estimate)
    gen = torch.Generator().manual_seed(1)
    x0 = ems.data_samples(model, None, n, gen)
    y = x0 + float(np.exp(-lam)) * torch.randn(x0.shape, dtype=torch.float64, generator=gen)
    t = float(model.noise.t_of_lam(lam))
    a = float(model.noise.alpha(t))
    J = torch.stack([torch.autograd.functional.jacobian(lambda u: model(a * u[None], t)[0].reshape(-1), yi)
                     .reshape(64, 64) for yi in y])
    exact = 1 - torch.diagonal(J, dim1=1, dim2=2).mean(0).numpy()
    # Hutchinson's error on dimension i has std sqrt(sum_{j != i} J_ij^2 / (n probes)), averaged over samples
    off = (J ** 2).sum(2) - torch.diagonal(J, dim1=1, dim2=2) ** 2
    std = (off.mean(0) / (n * probes)).sqrt().numpy()
    assert np.abs(got.ravel() - exact).max() > 0  # an estimate, not the exact value
    assert np.all(np.abs(got.ravel() - exact) < 5 * std + 1e-12)
    assert np.abs(exact).max() > 0.1  # a Jacobian worth estimating at this lambda


def test_least_squares_recovers_s_and_b_and_a_ridge_only_touches_flat_dimensions():
    rng = np.random.default_rng(0)
    lam = np.linspace(-2, 2, 5)
    n, d = 400, 6
    l = 0.5 + 0.1 * np.sin(lam)[:, None] * np.ones(d)
    s_true, b_true = rng.normal(size=(5, d)), rng.normal(size=(5, d))
    y, D = rng.normal(size=(5, n, d)), rng.normal(size=(5, n, d))
    D[:, :, -1] = (1 - l[:, None, -1]) * y[:, :, -1] + 0.3  # last dimension: f is constant (Var f = 0)
    A, P = 1 - l[:, None], -np.gradient(l, lam, axis=0)[:, None] - (1 - l[:, None])
    f = A * y - D
    dD = P * y + A * D - (s_true[:, None] * f + b_true[:, None])  # so that f' = s f + b exactly
    M = {"y": y.mean(1), "D": D.mean(1), "dD": dD.mean(1), "yy": (y * y).mean(1), "yD": (y * D).mean(1),
         "DD": (D * D).mean(1), "ydD": (y * dD).mean(1), "DdD": (D * dD).mean(1), "hutch": 1 - l}
    plain = ems.fit(M, lam, ridge=0.0)
    np.testing.assert_allclose(plain["s"][:, :-1], s_true[:, :-1], rtol=1e-9)
    np.testing.assert_allclose(plain["b"][:, :-1], b_true[:, :-1], rtol=1e-9, atol=1e-9)
    ridged = ems.fit(M, lam)
    np.testing.assert_allclose(ridged["s"][:, :-1], s_true[:, :-1], rtol=3e-3)
    assert np.abs(ridged["s"][:, -1]).max() < 1e-9
    # f is constant there, so s cannot be told from b: s = 0 and b = E[f'] fit f' exactly
    np.testing.assert_allclose(ridged["b"][:, -1], -0.3 * s_true[:, -1] + b_true[:, -1], atol=1e-9)


def test_estimated_ems_beat_l1_s0_b0_on_gaussian():
    model = gaussian()
    lam = ems.lambda_grid(model.noise, 1.0, 1e-3, 121)
    stats = ems.estimate(CountedDenoiser(model, None), lam, samples=128, probes=1, seed=0, batch=128)
    for steps in (5, 10):
        with_ems = rel_error(model, steps, calibration=stats)
        plain = rel_error(model, steps, degenerated=True)
        assert with_ems < plain / 4, (steps, with_ems, plain)  # measured: 5 steps 0.016 vs 0.074, 10: 0.005 vs 0.066


def test_missing_data_source_is_one_clear_error(tmp_path):
    net_like = type("Net", (), {"shape": (1, 8, 8)})()
    with pytest.raises(NfebenchError, match="no such dataset"):  # a model config's data that is not there
        ems.data_samples(type("Net", (), {"shape": (1, 8, 8), "data": str(tmp_path / "x.npz")})(), None, 4,
                         torch.Generator())
    with pytest.raises(NfebenchError, match="has no data distribution of its own; set solver.ems_data"):
        ems.data_samples(net_like, None, 4, torch.Generator())
    with pytest.raises(NfebenchError, match="no such dataset"):
        ems.check_data(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "imgs.npz", x=np.zeros((3, 8, 8, 1), dtype=np.uint8))  # NHWC uint8 -> [-1, 1]
    got = ems.data_samples(net_like, ems.check_data(str(tmp_path / "imgs.npz")), 5, torch.Generator())
    assert got.shape == (5, 1, 8, 8) and float(got.max()) == -1.0
    with pytest.raises(NfebenchError, match=r"expected samples of shape \[3, 4, 4\]"):
        ems.data_samples(type("Net", (), {"shape": (3, 4, 4)})(), str(tmp_path / "imgs.npz"), 2, torch.Generator())


# ---- the solver ------------------------------------------------------------------------------------------------

# Golden numbers from the reference: thu-ml/DPM-Solver-v3, commit ba168717cef161d3b0b0fae1d69f8ff66838aee3, file
# dpm_solver_v3.py (DPM_Solver_v3(statistics_dir, noise_schedule=NoiseScheduleVP("linear"), steps, t_start=1.0,
# t_end=1e-3, skip_type="logSNR").sample(x_T, model_fn, ...)), run once on CPU outside this repository with a
# shim: torch.Tensor.cuda -> identity, torch default dtype float64, torch.FloatTensor(times) -> float64 (it meets
# float64 arrays here; on CUDA with a float32 model both are float32). Same inputs as below: synthetic_ems(gaussian())
# saved as l.npz / sb.npz, model_fn = eps of nfebench's gaussian() at float(t), x_T = sigma(1) * randn(2, 1, 4, 4)
# from torch.Generator().manual_seed(0). Recorded: the EMS grid indexes and x[0].flatten()[:4], sum, norm.
REFERENCE = {
    "A": (dict(steps=7, order=3, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final="always"),
          [0, 6, 11, 17, 23, 29, 34, 40],
          [3.9801270797726196, -4.4397887091595, -1.9780262047899273, -1.7291737786667951],
          -0.13742312839597837, 20.780988782877365),
    "B": (dict(steps=6, order=3, p_pseudo=True, use_corrector=True, c_pseudo=False, lower_order_final="never"),
          [0, 7, 13, 20, 27, 33, 40],
          [-3.655337235367269, 0.036731391044900405, 1.923646598356553, -5.47170111232583],
          0.09120145426857063, 14.534484949608336),
    "C": (dict(steps=10, order=2, p_pseudo=False, use_corrector=False, c_pseudo=False, lower_order_final="always"),
          list(range(0, 41, 4)),
          [-3.1011103875085717, -0.37522756246429595, -1.3193548540372955, 2.038915078700074],
          -6.572557190638788, 4.9648421160066265),
    "D": (dict(steps=5, order=1, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final="always"),
          list(range(0, 41, 8)),
          [-1.4234630761984455, -0.8330539419118405, -0.5371715471164029, 1.341233190026791],
          -4.398730431907969, 5.050499264040575),
    # half=True: the reference corrects only where t > 0.5 (half_rule: code)
    "E": (dict(steps=8, order=3, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final="always",
               half=True), list(range(0, 41, 5)),
          [5.201031709299514, -3.0382859061139973, 1.7598439606857212, 0.6778206702833028],
          12.35297331498149, 16.851359711206186),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_matches_the_reference_code(name):
    from sampling.solvers.dpm_solver_v3 import snap

    opts, indexes, first, total, norm = REFERENCE[name]
    opts = dict(opts)
    steps = opts.pop("steps")
    model = gaussian()
    stats = synthetic_ems(model)
    ts = make_grid(model.noise, steps, "logsnr")
    assert snap(model.noise, ts, stats["lambdas"]) == indexes
    x_T = float(model.noise.sigma(1.0)) * torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0),
                                                       dtype=torch.float64)
    counter = CountedDenoiser(model, steps)
    x = get_solver("dpm_solver_v3").fn(counter, x_T, ts, model.noise, None, calibration=stats, ems_points=41, **opts)
    assert counter.count == steps
    np.testing.assert_allclose(x[0].reshape(-1)[:4].numpy(), first, rtol=1e-10, atol=1e-11)
    assert float(x.sum()) == pytest.approx(total, abs=1e-10)
    assert float(x.norm()) == pytest.approx(norm, rel=1e-11)


def test_half_rules_are_complementary():
    model, stats = gaussian(), synthetic_ems(gaussian())
    def run(**o):
        return solve_steps(model, "dpm_solver_v3", 8, n=2, calibration=stats, ems_points=41, **o)[0]

    full, none = run(), run(use_corrector=False)
    code, paper = run(half=True), run(half=True, half_rule="paper")
    assert not torch.equal(code, paper) and not torch.equal(code, full) and not torch.equal(paper, none)
    # on the 8-step log-SNR grid t crosses 0.5 once, so each rule corrects part of the steps
    ts = make_grid(model.noise, 8, "logsnr")
    assert 0 < sum(float(t) > 0.5 for t in ts[1:]) < 8


def test_degenerated_is_dpm_solver_pp_up_to_quadrature_error():
    model = gaussian()
    # first order: DPM-Solver++(1) = DDIM; the grid's steps fall on EMS points (1200 and 300 divisible by 10)
    plain = solve_steps(model, "dpmpp", 10, order=1)[0]
    diffs = {p: float((solve_steps(model, "dpm_solver_v3", 10, order=1, use_corrector=False, degenerated=True,
                                   ems_points=p)[0] - plain).abs().max()) for p in (301, 1201)}
    assert diffs[1201] < 1e-4 and 12 < diffs[301] / diffs[1201] < 20  # trapezoid rule: error ~ (grid step)^2
    # third order: the Taylor terms integrated exactly = 3M with variant exact (the warm-up's second step differs:
    # DPM-Solver++ takes its 2M midpoint form there)
    pp = solve_steps(model, "dpmpp", 20, order=3, variant="exact", lower_order_final="never")
    v3 = solve_steps(model, "dpm_solver_v3", 20, order=3, use_corrector=False, degenerated=True, ems_points=1201,
                     lower_order_final="never")
    ref = model.ode_solution(pp[1], float(pp[2][0]), float(pp[2][-1]))
    assert float((v3[0] - pp[0]).norm()) < 0.05 * float((pp[0] - ref).norm())


def test_derivative_weights_are_exact_on_polynomials():
    lams = np.array([0.3, 0.1, -0.25, -0.6])
    g = lambda u: 1 + 2 * (u - 0.3) - 1.5 * (u - 0.3) ** 2 + 0.7 * (u - 0.3) ** 3  # noqa: E731
    np.testing.assert_allclose(derivative_weights(lams, False) @ g(lams), [2, -3, 4.2], rtol=1e-10)
    # divided differences (pseudo-order): the m-th through nodes 0..m, exact on polynomials of degree m
    pseudo = derivative_weights(lams, True)
    assert pseudo[2] @ g(lams) == pytest.approx(4.2, rel=1e-10)
    assert pseudo[0] @ (1 + 2 * lams) == pytest.approx(2, rel=1e-12) and pseudo[0] @ g(lams) != pytest.approx(2)


@pytest.mark.parametrize("order, expected", [(1, 1.0), (2, 2.0), (3, 3.0)])
def test_order_on_gaussian(order, expected):
    """Predictor only, no lower-order final steps, 15-60 steps on the log-SNR grid, 1200-interval EMS (synthetic:
    the order is the update's, for any smooth statistics). Measured: 0.96, 2.32, 2.97 (pre-asymptotic: the
    first-order warm-up step caps every multistep method at 2 in the limit; at 25-100 steps order 3 fits 2.63)."""
    model = gaussian()
    stats = synthetic_ems(model, points=1201)
    steps = [15, 30, 60]
    errors = [rel_error(model, n, calibration=stats, ems_points=1201, order=order, use_corrector=False,
                        lower_order_final="never") for n in steps]
    fitted = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert fitted == pytest.approx(expected, abs=0.4), errors


def test_golden_full_loop():
    # nfebench's own value (defaults: order 3, corrector with c_pseudo, lower_order_final always) on gaussian()
    # with synthetic_ems, 10 steps on the log-SNR grid, 4 samples of seed 0; recorded when written, must not drift
    x = solve_steps(gaussian(), "dpm_solver_v3", 10, n=4, calibration=synthetic_ems(gaussian()), ems_points=41)[0]
    assert float(x.mean()) == pytest.approx(GOLDEN[0], rel=1e-9)
    assert float(x.abs().mean()) == pytest.approx(GOLDEN[1], rel=1e-9)


GOLDEN = (-0.07927434693163642, 0.4717098751131184)  # nfebench, this branch, float32 samples


# ---- through launch.py: the calibration stage ------------------------------------------------------------------

def test_calibrate_only_then_a_cached_run_then_require(tmp_path):
    cal = tmp_path / "cal"
    common = ["model=gaussian", "solver=dpm_solver_v3", "nfe=6", "num_samples=16", "batch_size=16",
              "solver.ems_points=21", "solver.ems_samples=32", "solver.ems_batch=16", "solver.ems_probes=2",
              f"calibration.dir={cal}"]
    r = launch(*common, "calibrate_only=true", f"hydra.run.dir={tmp_path / 'a'}")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "a" / "record.json").read_text())
    info = rec["calibration"]["ems"]
    # each of 21 points: 2 probe jvps + 1 flow jvp + 2 plain calls per batch of 16, 2 batches
    assert rec["status"] == "calibrated" and info["status"] == "computed" and info["nfe"] == 21 * (2 + 3) * 2
    assert info["settings"]["points"] == 21 and info["settings"]["probes"] == 2
    r = launch(*common, "calibration.mode=require", f"hydra.run.dir={tmp_path / 'b'}")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "b" / "record.json").read_text())
    assert rec["calibration"]["ems"]["status"] == "hit" and rec["calibration"]["ems"]["nfe"] == 210
    assert rec["nfe"]["counted"] == 6 and rec["metrics"]["ode_rmse"] < 0.05
    # another estimator setting is another cache entry: require fails in one line, writes nothing
    r = launch(*common, "solver.ems_seed=1", "calibration.mode=require", f"hydra.run.dir={tmp_path / 'c'}")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nfebench: error: calibration 'ems' is not cached")
    assert not (tmp_path / "c" / "record.json").exists()


@pytest.mark.parametrize("override, message", [
    ("solver.ems_data=/no/such.npz", "EMS data /no/such.npz (solver.ems_data or model.data): no such dataset (digits)"),
    ("solver.ems_points=5", "dpm_solver_v3: 6 steps do not fit on an EMS grid of 5 points"),
    ("solver.half_rule=sometimes", "unknown dpm_solver_v3 half_rule 'sometimes'; valid: code, paper"),
    ("solver.ems_samples=1", "solver.ems_samples must be >= 2; got 1"),
])
def test_bad_options_fail_in_one_line_before_loading(tmp_path, override, message):
    r = launch("model=digits", "solver=dpm_solver_v3", "nfe=6", override, f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "record.json").exists()


def test_degenerated_needs_no_calibration(tmp_path):
    r = launch("model=gaussian", "solver=dpm_solver_v3", "solver.degenerated=true", "nfe=5", "num_samples=8",
               f"calibration.dir={tmp_path / 'cal'}", "calibration.mode=require", f"hydra.run.dir={tmp_path / 'r'}")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r" / "record.json").read_text())["calibration"] == {}


@pytest.mark.slow
def test_network_ems_through_jvp_on_digits_unet_with_its_configured_data(tmp_path):
    # digits_unet's config names its training data (data: digits); the jvp runs through diffusers' UNet (attention
    # on the math kernel: the fused ones have no forward-mode derivative)
    r = launch("model=digits_unet", "solver=dpm_solver_v3", "nfe=4", "num_samples=8", "batch_size=8", "metrics=none",
               "solver.ems_points=9", "solver.ems_samples=8", "solver.ems_batch=8", f"calibration.dir={tmp_path / 'c'}",
               f"hydra.run.dir={tmp_path / 'r'}")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "r" / "record.json").read_text())
    assert rec["calibration"]["ems"]["nfe"] == 9 * 4 and rec["nfe"]["counted"] == 4
    z = np.load(rec["calibration"]["ems"]["file"])
    assert z["l"].shape == (9, 1, 8, 8) and np.isfinite(z["s"]).all() and np.isfinite(z["b"]).all()
    assert 0.5 < float(z["l"][0].mean()) <= 1.01 and float(z["l"][-1].mean()) < 0.5  # sigma d eps/dx: 1 -> 0
