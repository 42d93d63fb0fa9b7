import numpy as np
import pytest
import torch

from helpers import gaussian, solve_steps
from metrics.exact import ExactMetrics
from metrics.frechet import frechet_distance
from metrics.streaming import RunningMoments
from results.published import load_published


def test_frechet_distance_matches_its_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 5))
    cov = a @ a.T + np.eye(5)
    mu = rng.standard_normal(5)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    shift = np.full(5, 0.3)
    assert frechet_distance(mu, cov, mu + shift, cov) == pytest.approx(5 * 0.09, rel=1e-9)
    # Commuting covariances: tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt(l1) - sqrt(l2))^2.
    l1, l2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    assert frechet_distance(np.zeros(3), np.diag(l1), np.zeros(3), np.diag(l2)) == pytest.approx(
        np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2), rel=1e-12)


def test_merged_running_moments_equal_one_pass():
    x = np.random.default_rng(1).standard_normal((1000, 6)) * 3 + 100
    one = RunningMoments(6).update(x)
    parts = RunningMoments(6)
    for lo, hi in ((0, 1), (1, 300), (300, 1000)):
        parts.merge(RunningMoments(6).update(x[lo:hi]))
    np.testing.assert_allclose(parts.mean, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(parts.cov(), np.cov(x, rowvar=False), rtol=1e-11)
    np.testing.assert_allclose(parts.cov(), one.cov(), rtol=1e-12)


def test_exact_metrics_shrink_with_nfe_and_merge_across_shards():
    m = gaussian(shape=(1, 2, 2))

    def metrics(steps, parts):
        suites = []
        for lo, hi in parts:
            x, x0, ts, _ = solve_steps(m, "ddim", steps, n=hi, seed=0)
            s = ExactMetrics(m, float(ts[0]), float(ts[-1]))
            s.update(x[lo:hi], x0[lo:hi])
            suites.append(s)
        for s in suites[1:]:
            suites[0].merge_state(s.state())
        return suites[0].result()

    coarse, fine = metrics(3, [(0, 4000)]), metrics(40, [(0, 4000)])
    assert fine["ode_rmse"] < coarse["ode_rmse"] / 5
    assert fine["fd_pixel"] < coarse["fd_pixel"]
    split = metrics(40, [(0, 1500), (1500, 4000)])
    assert split == pytest.approx(fine, rel=1e-9)


def test_exact_ode_rmse_is_zero_for_the_exact_solution():
    m = gaussian(shape=(1, 2, 2))
    x, x0, ts, _ = solve_steps(m, "ddim", 5, n=50)
    s = ExactMetrics(m, float(ts[0]), float(ts[-1]))
    s.update(m.ode_solution(x0, float(ts[0]), float(ts[-1])), x0)
    assert s.result()["ode_rmse"] == pytest.approx(0.0, abs=1e-12)
    assert torch.isfinite(x).all()


def test_published_numbers_are_bundled_as_data():
    df = load_published()
    assert len(df) == 401 and set(df["metric"]) == {"FID", "IS"}
    assert df["value"].notna().all() and (df["nfe"] > 0).all()
    ddim10 = df[(df["table"] == "Table 1") & (df["solver"] == "DDIM eta=0.0") & (df["nfe"] == 10)
                & (df["dataset"] == "CIFAR-10 32x32")]
    assert ddim10["value"].tolist() == [13.36]  # DDIM paper, Table 1, CIFAR-10, S=10
