import numpy as np
import pytest

from common.errors import NfebenchError
from sampling.schedules import NOISE_SCHEDULES, VPDiscrete, make_noise_schedule
from sampling.timesteps import GRIDS, make_grid

ALL = [dict(name=n) for n in sorted(NOISE_SCHEDULES)] + [dict(name="vp_discrete", betas="cosine")]


@pytest.mark.parametrize("params", ALL, ids=lambda p: "-".join(map(str, p.values())))
def test_schedule_conversions_between_t_lambda_and_sigma_round_trip(params):
    ns = make_noise_schedule(**params)
    t = np.linspace(ns.eps, ns.T, 57)
    a, s, lam = ns.alpha(t), ns.sigma(t), ns.lam(t)
    np.testing.assert_allclose(lam, np.log(a / s), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ns.edm_sigma(t), s / a, rtol=1e-12)
    np.testing.assert_allclose(ns.t_of_lam(lam), t, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ns.t_of_edm_sigma(s / a), t, rtol=1e-9, atol=1e-12)
    assert np.all(np.diff(lam) < 0), "log-SNR must fall as t grows"


def test_vp_is_variance_preserving():
    for name in ("vp_linear", "vp_cosine", "vp_discrete"):
        ns = make_noise_schedule(name=name)
        t = np.linspace(ns.eps, ns.T, 11)
        np.testing.assert_allclose(ns.alpha(t) ** 2 + ns.sigma(t) ** 2, 1.0, rtol=1e-12)


def test_vp_linear_matches_its_sde():
    # log alpha(t) = -int_0^t beta(s)/2 ds with beta linear from beta_min to beta_max.
    ns = make_noise_schedule(name="vp_linear", beta_min=0.1, beta_max=20.0)
    t = 0.37
    assert ns.log_alpha(t) == pytest.approx(-0.5 * (0.1 * t + 0.5 * 19.9 * t * t), rel=1e-14)


def test_discrete_schedule_sits_on_the_training_steps():
    ns = VPDiscrete(betas="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000)
    alphas_cumprod = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    n = np.array([0, 1, 250, 999])
    t = (n + 1) / 1000
    np.testing.assert_allclose(ns.alpha(t) ** 2, alphas_cumprod[n], rtol=1e-12)
    np.testing.assert_allclose(ns.model_time(t), n, atol=1e-9)
    # Between training steps log alpha is linear in t (the DPM-Solver mapping).
    mid = (t[1] + t[0]) / 2
    assert ns.log_alpha(mid) == pytest.approx(0.5 * (ns.log_alpha(t[0]) + ns.log_alpha(t[1])), rel=1e-12)
    assert ns.eps == pytest.approx(1e-3) and ns.T == 1.0


# The training-step grids only exist on vp_discrete and start at their first spaced step, not T
# (tests/test_vs_diffusers_classic.py, test_vs_diffusers_protocol.py, test_solvers_protocols.py).
DISCRETE_ONLY = {"discrete", "ddim_uniform", "ddim_quadratic", "diffusers"}


@pytest.mark.parametrize("grid", sorted(DISCRETE_ONLY))
def test_training_step_grids_refuse_continuous_schedules(grid):
    with pytest.raises(NfebenchError, match="vp_discrete"):
        make_grid(make_noise_schedule(name="vp_linear"), 12, grid)


@pytest.mark.parametrize("grid", sorted(set(GRIDS) - {"explicit"} - DISCRETE_ONLY))
def test_grids_are_decreasing_and_span_the_schedule(grid):
    ns = make_noise_schedule(name="vp_linear")
    ts = make_grid(ns, 12, grid)
    assert len(ts) == 13 and ts[0] == ns.T and ts[-1] == ns.eps
    assert np.all(np.diff(ts) < 0)


def test_logsnr_karras_and_quadratic_grids_are_uniform_in_their_own_variable():
    ns = make_noise_schedule(name="vp_linear")
    lam = ns.lam(make_grid(ns, 10, "logsnr"))
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-9)
    s = ns.edm_sigma(make_grid(ns, 10, "karras", rho=7.0))
    np.testing.assert_allclose(np.diff(s ** (1 / 7)), np.diff(s ** (1 / 7))[0], rtol=1e-8)
    ts = make_grid(ns, 10, "time_quadratic")
    np.testing.assert_allclose(np.diff(np.sqrt(ts)), np.diff(np.sqrt(ts))[0], rtol=1e-10)


def test_bad_grid_and_schedule_requests_are_refused():
    ns = make_noise_schedule(name="edm")
    with pytest.raises(NfebenchError, match="unknown time-step schedule"):
        make_grid(ns, 4, "nope")
    with pytest.raises(NfebenchError, match="strictly decreasing"):
        make_grid(ns, 0, "explicit", ts=[1.0, 2.0])
    with pytest.raises(NfebenchError, match="sigma_min < sigma_max"):
        make_grid(ns, 4, "karras", sigma_max=1000.0)
    with pytest.raises(NfebenchError, match="unknown noise schedule"):
        make_noise_schedule(name="nope")
