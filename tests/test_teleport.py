"""Analytical teleportation (sampling/teleport.py): the closed-form Gaussian PF-ODE, the hand-over grids,
the data statistics through the calibration stage, and what the record says."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from common.errors import NfebenchError
from launch import calibration
from launch.run import load_model, plan, sample_batch, sample_batches
from sampling import teleport
from sampling.timesteps import make_grid
from helpers import compose_cfg, launch, run_module, write_pngs


def _identity(model, x, ts, noise, rng, **opts):
    return x


def teleported(cfg, tmp_path):
    """(state handed to the solver, initial noise, plan, model): the plan's solver replaced by the identity."""
    p = plan(cfg)
    p = dataclasses.replace(p, spec=dataclasses.replace(p.spec, fn=_identity), final_x0=False)
    model = load_model(cfg)
    arrays, info = calibration.prepare(cfg, p, model, "cpu")
    x, x_start, counter = sample_batch(cfg, p, model, range(16), "cpu", calibrated=arrays)
    assert counter.count == 0 and info["data_stats"]["nfe"] == 0
    return x, x_start, p, model


@pytest.mark.parametrize("schedule", ["vp_linear", "vp_cosine", "edm", "ve"])
@pytest.mark.parametrize("handover", ["teleport.skip=0.6", "teleport.sigma=0.7"])
def test_full_rank_on_gaussian_is_the_exact_ode_solution(tmp_path, schedule, handover):
    cfg = compose_cfg("model=gaussian", f"model/noise_schedule={schedule}", "dtype=float64", "nfe=10", handover,
                      f"calibration.dir={tmp_path}")
    x, x_start, p, model = teleported(cfg, tmp_path)
    assert p.teleport.t == p.ts[0] < p.t_start
    exact = model.ode_solution(x_start, p.t_start, p.teleport.t)
    assert float((x - exact).abs().max() / exact.abs().max()) < 1e-12
    # and it moved: the state at the hand-over is not the initial noise
    assert float((x - x_start).abs().max()) > 0.1 * float(x_start.abs().max())


@pytest.mark.parametrize("residual", ["mean", "zero"])
def test_low_rank_is_the_exact_solution_for_its_own_spectrum(residual):
    """Rank k + isotropic rest r: exact for the Gaussian whose eigenvalues beyond k are all r."""
    cfg = compose_cfg("model=gaussian", "dtype=float64")
    model, twin = load_model(cfg), load_model(cfg)
    k = 7
    stats = teleport.eigen_stats(*model.data_moments(), k, residual)
    twin.var = model.var.copy()  # already sorted largest first, as eigen_stats sorts
    twin.var[k:] = model.var[k:].mean() if residual == "mean" else 0.0
    x = 150.0 * torch.randn(5, *model.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t0, t1 = 1.0, 0.4
    exact = twin.ode_solution(x, t0, t1)
    got = teleport.teleport(x, t0, t1, model.noise, stats)
    assert float((got - exact).abs().max() / exact.abs().max()) < 1e-12
    full = model.ode_solution(x, t0, t1)
    assert float((got - full).abs().max()) > 1e-4  # the rank matters


def test_low_rank_zero_residual_matches_the_reference_code():
    """Golden values from the reference's own `edm_x_t_traj` (Animadversio/GaussianTeleportationDiffusion,
    benchmark/edm_analytical_massprod_O2.py at the fetched HEAD), run once on CPU in float64 on these inputs
    (torch 2.x generator seed 0): (sum, sum of squares, first three entries of sample 0 / sample 1)."""
    g = torch.Generator().manual_seed(0)
    d, r = 16, 4
    xT = 80.0 * torch.randn(2, d, generator=g, dtype=torch.float64)
    mu = torch.randn(d, generator=g, dtype=torch.float64) * 0.5
    U, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    lam = torch.rand(r, generator=g, dtype=torch.float64) * 2
    U2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam2 = torch.rand(d, generator=g, dtype=torch.float64)
    golden = [  # (U, Lambda, sigma, sample, sum, sum of squares, first three)
        (U, lam, 10.0, 0, -86.58660672510186, 3367.2463353955754,
         [-23.234333524813135, -3.5094908402058356, -10.646879909798246]),
        (U, lam, 1.5, 0, -14.918617732211422, 90.4019643484857,
         [-4.062221508298047, -0.40862934210579266, -1.8100420471522085]),
        (U2, lam2, 1.5, 1, -14.562742438570567, 97.24310590232386,
         [0.2120979575978496, -0.6595408735434181, -2.040869553197617]),
    ]
    for basis, eig, s1, row, total, squares, first in golden:
        stats = {"mean": mu.numpy(), "eigvecs": basis.numpy(), "eigvals": eig.numpy(), "residual": np.asarray(0.0)}
        out = teleport.teleport_edm(xT, stats, 80.0, s1)
        assert float(out.sum()) == pytest.approx(total, rel=1e-12)
        assert float(out.pow(2).sum()) == pytest.approx(squares, rel=1e-12)
        np.testing.assert_allclose(out[row, :3].numpy(), first, rtol=1e-12)


def test_skip_zero_is_bit_identical_to_no_teleport(tmp_path):
    base = ["model=digits", "nfe=6", "num_samples=12", "batch_size=12", "metrics=none", f"calibration.dir={tmp_path}"]
    outs = []
    for extra in ([], ["teleport.skip=0"]):
        cfg = compose_cfg(*base, *extra)
        p = plan(cfg)
        model = load_model(cfg)
        assert calibration.needs(cfg, p) == []  # nothing moves, nothing to compute
        got = []
        sample_batches(cfg, p, model, "cpu", lambda x, x0, idx: got.append(x))
        outs.append((p.ts, got[0]))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])
    assert not any(tmp_path.iterdir())


def _grid_plan(*overrides):
    cfg = compose_cfg("model=digits", *overrides)
    return plan(cfg), cfg


def test_regrid_restart_and_keep_give_the_documented_grids():
    p0, cfg = _grid_plan("nfe=10")
    noise = p0.noise
    restart, _ = _grid_plan("nfe=10", "teleport.skip=0.3")
    keep, _ = _grid_plan("nfe=10", "teleport.skip=0.3", "teleport.regrid=keep")
    # keep: the original grid's last N - k points; restart: the schedule (logsnr) afresh from ts[k] with N - k
    # steps. Every schedule uniform in some f(t) (logsnr, time_uniform, time_quadratic, karras) is self-similar,
    # so at a grid point the two agree to rounding.
    np.testing.assert_array_equal(keep.ts, p0.ts[3:])
    np.testing.assert_array_equal(restart.ts, make_grid(noise, 7, "logsnr", t_start=p0.ts[3]))
    np.testing.assert_allclose(restart.ts, keep.ts, rtol=1e-12)
    assert restart.teleport.t == keep.teleport.t == p0.ts[3] and restart.steps == keep.steps == 7
    np.testing.assert_array_equal(restart.teleport.original, p0.ts)
    # the reference's skip: a fresh rho = 7 grid of N - k steps from sigma_k, which on a Karras grid is its tail
    kr, _ = _grid_plan("nfe=10", "schedule=karras", "teleport.skip=0.4")
    k0, _ = _grid_plan("nfe=10", "schedule=karras")
    np.testing.assert_allclose(noise.edm_sigma(kr.ts), noise.edm_sigma(k0.ts[4:]), rtol=1e-12)
    # by sigma (between grid points): the steps ending at or above it are replaced; keep starts there and
    # then follows the original points, restart spaces N - k steps afresh from it
    s = float(noise.edm_sigma(p0.ts[3])) * 0.9  # between ts[3] and ts[4]
    ks, _ = _grid_plan("nfe=10", f"teleport.sigma={s}", "teleport.regrid=keep")
    rs, _ = _grid_plan("nfe=10", f"teleport.sigma={s}")
    assert ks.teleport.skipped == rs.teleport.skipped == 3 and ks.steps == rs.steps == 7
    assert float(noise.edm_sigma(ks.ts[0])) == pytest.approx(s, rel=1e-12) and rs.ts[0] == ks.ts[0]
    np.testing.assert_array_equal(ks.ts[1:], p0.ts[4:])
    np.testing.assert_array_equal(rs.ts, make_grid(noise, 7, "logsnr", t_start=ks.ts[0]))
    assert np.abs(rs.ts - ks.ts).max() > 1e-3


@pytest.mark.parametrize("solver, nfe, spent", [("dpmpp", 10, 7), ("heun", 19, 13), ("pndm", 11, 8)])
def test_plan_spends_the_rest_of_the_budget(solver, nfe, spent):
    p, cfg = _grid_plan(f"solver={solver}", f"nfe={nfe}", "teleport.skip=0.3")
    assert p.cost == spent


def test_record_counts_the_spent_budget_and_the_saved_nfe(tmp_path):
    r = launch("model=digits", "nfe=10", "teleport.skip=0.3", "num_samples=8", "metrics=none",
               f"calibration.dir={tmp_path / 'cal'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["nfe"]["requested"] == 10 and rec["nfe"]["counted"] == 7
    tp = rec["teleport"]
    assert tp["nfe_saved"] == 3 and tp["nfe_without"] == 10 and tp["steps_skipped"] == 3
    assert rec["schedule"]["t_grid"][0] == tp["hand_over_t"] == tp["original_t_grid"][3]
    assert len(rec["schedule"]["t_grid"]) == 8 and tp["from_sigma"] > tp["hand_over_sigma"]
    cal = rec["calibration"]["data_stats"]
    assert cal["nfe"] == 0 and cal["status"] == "computed" and cal["settings"]["source"] == "model"


def test_digits_unet_uses_the_bundled_digits(tmp_path):
    cfg = compose_cfg("model=digits_unet", "nfe=10", "teleport.skip=0.5", "teleport.rank=8")
    need = plan(cfg).teleport.need
    assert need.settings["source"].startswith("sklearn.load_digits") and need.settings["rank"] == 8
    stats = need.compute(None, "cpu")
    x = teleport.digits_images()
    np.testing.assert_allclose(stats["mean"], x.mean(0), atol=1e-14)
    lam = np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))[::-1]
    np.testing.assert_allclose(stats["eigvals"], lam[:8], rtol=1e-10)
    assert float(stats["residual"]) == pytest.approx(lam[8:].mean(), rel=1e-10)


def test_folder_and_npz_sources_agree(tmp_path):
    images = torch.as_tensor(teleport.digits_images()[:40]).reshape(-1, 1, 8, 8)
    write_pngs(tmp_path / "imgs", images)
    quantised = np.round((images.numpy() + 1) * 127.5).astype(np.uint8)  # what the PNGs hold
    np.savez(tmp_path / "imgs.npz", images=quantised.transpose(0, 2, 3, 1))
    model_cfg = {"name": "some_unet", "family": "diffusers_unet"}
    got = [teleport.stats_need({"stats": str(tmp_path / src), "rank": 5}, model_cfg) for src in ("imgs", "imgs.npz")]
    assert got[0].settings["source"].startswith("folder:") and got[1].settings["source"].startswith("npz:")
    a, b = (need.compute(None, "cpu") for need in got)
    for key in ("mean", "eigvals", "residual"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a["mean"], (quantised / 127.5 - 1).reshape(40, -1).mean(0), atol=1e-12)
    # an npz of the statistics themselves is taken as they are (truncated to the rank)
    np.savez(tmp_path / "pca.npz", mean=a["mean"], eigvals=a["eigvals"], eigvecs=a["eigvecs"])
    c = teleport.stats_need({"stats": str(tmp_path / "pca.npz"), "rank": 3}, model_cfg).compute(None, "cpu")
    np.testing.assert_array_equal(c["eigvals"], a["eigvals"][:3])
    assert float(c["residual"]) == pytest.approx(a["eigvals"][3:].mean())


def test_a_real_dataset_needs_its_statistics_named():
    with pytest.raises(NfebenchError, match=r"^teleport.stats=auto knows no data for model 'cifar10_ddpm'; set "
                                            r"teleport.stats to an image folder or an npz"):
        plan(compose_cfg("model=cifar10_ddpm", "teleport.skip=0.5"))


@pytest.mark.parametrize("overrides, message", [
    (["teleport.skip=1.0"], "teleport.skip must be a fraction of the grid's steps in [0, 1); got 1.0"),
    (["teleport.skip=0.3", "teleport.sigma=2"], "teleport.skip and teleport.sigma both set; give one (null the other)"),
    (["teleport.sigma=1e6"], "teleport.sigma must lie inside the grid's sigma range (0.010486, 152.167); got 1000000.0"),
    (["teleport.regrid=later"], "unknown teleport.regrid 'later'; valid: restart, keep"),  # even while off
    (["+teleport.when=early"], "unknown teleport option(s) when; valid: skip, sigma, stats, rank, residual, regrid"),
    (["teleport.skip=0.5", "teleport.rank=0"], "teleport.rank must be an integer >= 1 or null (full rank); got 0"),
    (["teleport.skip=0.5", "teleport.stats=/nowhere/cifar"],
     "teleport.stats: no image folder or .npz file at /nowhere/cifar; put the dataset's images (png/jpg) in that "
     "folder, or an npz with 'images' or 'mean'+'eigvals'+'eigvecs' there (or stats=auto for digits, digits_unet, "
     "gaussian)"),
    (["teleport.skip=0.5", "model/noise_schedule=vp_discrete", "schedule=discrete",
      "schedule.spacing=trailing", "teleport.regrid=restart"],
     "teleport.regrid=restart cannot remake schedule 'discrete' from the hand-over time (only time_uniform, "
     "time_quadratic, logsnr, karras); use teleport.regrid=keep"),
])
def test_bad_teleport_options_fail_in_one_line(tmp_path, overrides, message):
    r = launch("model=digits", "nfe=10", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"nfebench: error: {message}"]
    assert not (tmp_path / "run").exists() or not (tmp_path / "run" / "record.json").exists()


def test_leaderboard_rows_name_the_teleport():
    from results.leaderboard import teleport_label

    opts = {"skip": None, "sigma": 10, "stats": "auto", "rank": 8, "residual": "mean", "regrid": "restart"}
    assert teleport_label({"teleport": {"options": opts}}) == " + teleport(rank=8,sigma=10)"
    assert teleport_label({}) == ""


def test_dry_run_counts_what_a_teleported_run_spends():
    from launch.dry_run import plan_run

    assert plan_run(compose_cfg("model=digits", "nfe=10", "teleport.skip=0.3"))["counted"] == 7
    assert plan_run(compose_cfg("model=digits", "nfe=10"))["counted"] == 10


def test_the_readme_error_table_command_runs():
    """`python -m launch.teleport_error` (the README's tables) in miniature: 4 samples, one sigma, one skip."""
    r = run_module("launch.teleport_error", "--num-samples", "4", "--ranks", "full,8", "--sigmas", "80",
                   "--skips", "0.4")
    assert r.returncode == 0, r.stderr
    rows = [line.split("|") for line in r.stdout.splitlines() if line.startswith("| 80 |")]
    full, low = (float(c.split()[0]) for c in rows[0][2:4])
    assert 0 < full < low < 0.01  # full rank is closer to the exact path than rank 8 at sigma 80
    spent = [line for line in r.stdout.splitlines() if "teleport.skip=0.4 rank full" in line]
    assert spent and spent[0].split("|")[2].strip() == "6"


def test_golden_full_loop_dpmpp_with_a_teleport_on_digits(tmp_path):
    # Golden values from this implementation (2026-12-02, after the issue-16 merge), a regression pin: digits,
    # dpmpp at nfe=10 on logsnr, teleport.skip=0.3 with the exact moments, float64, seed 0, samples 0-2.
    cfg = compose_cfg("model=digits", "nfe=10", "teleport.skip=0.3", "dtype=float64", f"calibration.dir={tmp_path}")
    p, model = plan(cfg), load_model(cfg)
    calibrated, _ = calibration.prepare(cfg, p, model, torch.device("cpu"))
    x, _, counter = sample_batch(cfg, p, model, range(3), torch.device("cpu"), calibrated=calibrated)
    assert counter.count == 7  # 3 of the 10 steps teleported
    got = x.flatten()[[0, 7, 20, 45, 63, 100, 150]].tolist()
    np.testing.assert_allclose(got, [-0.7423144815586374, -0.862630158637019, 0.052181610443377185,
                                     0.568375924119494, -0.8273907286367652, 0.8688486427055389,
                                     -1.0317321647802304], rtol=1e-10, atol=1e-12)
    assert float(x.sum()) == pytest.approx(-72.98319799002203, rel=1e-10)
