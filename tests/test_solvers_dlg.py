"""Denoising Langevin Gibbs (dlg): the exact noise-level posterior, the chain's stationary law on gaussian, zero
chain steps = the plain ODE solver, NFE bookkeeping, one-line refusals through launch.py, a golden value."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import compose_cfg, gaussian, launch, solve_steps
from launch.run import plan, sample_batches
from models.counter import CountedDenoiser
from models.registry import build_model
from sampling.registry import get_solver
from sampling.seeds import SampleNoise
from sampling.solvers import dlg
from sampling.timesteps import make_grid

F64 = pytest.mark.usefixtures("float64_default")


@F64
@pytest.mark.parametrize("family", ["gaussian", "digits"])
def test_noise_level_logits_are_the_exact_log_likelihoods(family):
    model = gaussian() if family == "gaussian" else build_model(compose_cfg("model=digits")["model"])
    d = math.prod(model.shape)
    sigmas = np.array([2.0, 0.7, 0.3, 0.1])
    x = torch.randn(5, *model.shape, generator=torch.Generator().manual_seed(1)) * 0.8
    got = model.noise_level_logits(x, sigmas)
    flat = x.reshape(5, -1)
    if family == "gaussian":  # N(x; mu, Sigma + s^2 I) from the data moments, by torch.distributions
        mean, cov = (torch.as_tensor(v) for v in model.data_moments())
        want = torch.stack([torch.distributions.MultivariateNormal(mean, cov + s * s * torch.eye(d)).log_prob(flat)
                            for s in sigmas], 1)
    else:  # the equal-weight mixture of N(c_n, (std^2 + s^2) I), one centre at a time
        c = torch.as_tensor(model.centers)
        want = torch.stack([torch.logsumexp(torch.stack([
            torch.distributions.Normal(cn, math.sqrt(model.std ** 2 + s * s)).log_prob(flat).sum(1) for cn in c]), 0)
            for s in sigmas], 1)
    # equal up to one constant per row: the posteriors over the levels agree
    assert torch.allclose(torch.softmax(got, 1), torch.softmax(want, 1), rtol=0, atol=1e-10)
    assert (got - want).std(1).max() < 1e-8


SWEEPS, POSTERIOR = 100, "sample"


class _BatchNoise:
    """One generator for the whole batch: the law is what matters here, and per-sample streams cost ~0.1 s a draw."""

    def __init__(self, g):
        self.g = g

    def like(self, x):
        return torch.randn(x.shape, generator=self.g, dtype=x.dtype)


@F64
def test_chain_keeps_the_exact_joint_law_on_gaussian():
    """Chains started from the exact joint p(s_k) N(x; mu, Sigma + s_k^2 I) (uniform over 6 levels) and run 100
    Langevin-Gibbs sweeps with a sampled level stay in it: the level frequencies, E[x], and E|x - mu|^2 given each
    level (tr Sigma + d s_k^2) match. Unadjusted Langevin at eta = 0.002 is biased by about eta / (4 v) <= 1% of
    a variance here, well inside the tolerances; an argmax level update or a wrong score sign fails them."""
    model = gaussian()
    noise, d, n = model.noise, 16, 2000
    s = np.geomspace(1.0, 0.25, 6)
    t = noise.t_of_edm_sigma(s)
    lv = dlg.Levels([float(v) for v in t], [float(v) for v in noise.alpha(t)], s)
    mean, cov = (torch.as_tensor(v) for v in model.data_moments())
    g = torch.Generator().manual_seed(3)
    level = torch.randint(0, len(s), (n,), generator=g)
    s_row = torch.as_tensor(s)[level]
    chol = torch.linalg.cholesky(cov[None] + s_row[:, None, None] ** 2 * torch.eye(d))
    x = (mean + (chol @ torch.randn(n, d, 1, generator=g))[..., 0]).reshape(n, *model.shape)
    counter, rng = CountedDenoiser(model, budget=None), _BatchNoise(g)
    for _ in range(SWEEPS):
        x, level = dlg.gibbs_sweep(counter, x, level, lv, 0.002, POSTERIOR, rng, model.noise_level_logits)
    assert counter.count == SWEEPS  # one NFE per sweep, however many levels the rows sit at
    freq = torch.bincount(level, minlength=len(s)).double() / n
    assert torch.allclose(freq, torch.full_like(freq, 1 / len(s)), atol=0.035), freq
    flat = x.reshape(n, -1)
    assert (flat.mean(0) - mean).abs().max() < 0.08
    for k in range(len(s)):
        second = ((flat[level == k] - mean) ** 2).sum(1).mean()
        want = float(torch.trace(cov)) + d * s[k] ** 2
        assert abs(float(second) / want - 1) < 0.1, (k, float(second), want)


@F64
@pytest.mark.parametrize("ode", ["dpmpp", "ipndm"])
def test_zero_chain_steps_is_the_plain_solver_then_tweedie_bit_for_bit(ode):
    model = gaussian()
    x, _, ts, counter = solve_steps(model, "dlg", 8, n=6, ode=ode, burn_in=0, mcmc_steps=0, sigma_max=None)
    plain, _, ts2, plain_counter = solve_steps(model, ode, 8, n=6)
    assert np.array_equal(ts, ts2)
    assert torch.equal(x, plain_counter(plain, float(ts[-1])))  # the plain solver + the x0 prediction at t_end
    assert counter.count == get_solver(ode).cost(8) + 1


def _cfg(nfe, n=6, bs=None, offset=0, **opts):
    return {"nfe": nfe, "num_samples": n, "batch_size": bs or n, "seed": 0, "sample_offset": offset, "t_end": None,
            "dtype": "float64", "model": {"family": "gaussian", "shape": [1, 4, 4],
                                          "noise_schedule": {"name": "vp_linear"}},
            "solver": {**compose_cfg("solver=dlg")["solver"], **opts}, "schedule": {"name": "logsnr"}}


def _run(nfe, n=6, bs=None, offset=0, **opts):
    cfg = _cfg(nfe, n, bs, offset, **opts)
    p, out = plan(cfg), []
    stats = sample_batches(cfg, p, build_model(cfg["model"]), torch.device("cpu"), lambda x, x0, idx: out.append(x))
    return p, stats, torch.cat(out)


def test_counted_nfe_is_the_declared_cost_and_the_record_splits_it():
    p, stats, x = _run(40, burn_in=6, mcmc_steps=4)
    facts = p.spec.describe(p.steps, **p.solver_opts)
    assert stats.counted == p.cost == 40 and facts["nfe_per_sample"] == 40
    assert (facts["nfe_burn_in"], facts["nfe_chain"], facts["nfe_ode"], facts["nfe_final"]) == (6, 4, 29, 1)
    assert facts["paper_nfe_approx"] == 4 + 29 + 1 and "independent" in facts["chains"]
    # the rows sat at several levels: more network calls than NFE, each NFE still one evaluation of every sample
    assert stats.network_evals > stats.counted and torch.isfinite(x).all()


def test_samples_do_not_depend_on_batching():
    base = {"nfe": 30, "num_samples": 4, "seed": 0, "sample_offset": 0, "t_end": None, "dtype": "float64",
            "model": {"family": "gaussian", "shape": [1, 4, 4], "noise_schedule": {"name": "vp_linear"}},
            "solver": {**compose_cfg("solver=dlg")["solver"], "burn_in": 5, "mcmc_steps": 5, "posterior": "sample"},
            "schedule": {"name": "logsnr"}}
    outs = []
    for bs in (4, 1, 3):
        cfg, got = {**base, "batch_size": bs}, []
        sample_batches(cfg, plan(cfg), build_model(cfg["model"]), torch.device("cpu"), lambda x, x0, idx: got.append(x))
        outs.append(torch.cat(got))
    assert torch.allclose(outs[0], outs[1], rtol=0, atol=1e-12) and torch.allclose(outs[0], outs[2], rtol=0, atol=1e-12)


def test_bad_options_are_one_line_errors_through_launch(tmp_path):
    for args, message in [(["solver.posterior=mode"], "unknown dlg posterior 'mode'"),
                          (["+solver.oder=3"], "unknown option(s) ['oder']")]:
        r = launch("model=gaussian", "solver=dlg", "nfe=40", "num_samples=4", "batch_size=4", *args,
                   f"hydra.run.dir={tmp_path}")
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1 and err[0].startswith("nfebench: error:") and message in err[0], \
            r.stderr
        assert not (tmp_path / "record.json").exists()


@pytest.mark.parametrize("opts,message", [
    ({"ode": "dpmpp_sde"}, "dlg's ode must be a deterministic solver"),
    ({"ode": "dlg"}, "dlg's ode must be a deterministic solver"),
    ({"sigma_max": 500.0}, "sigma_min < sigma_max <= 152"),
    ({"sigma_min": 2.0, "sigma_max": 1.0}, "sigma_min < sigma_max"),
    ({"burn_in": -1}, "burn_in >= 0"),
    ({"step_size": 0.0}, "step_size > 0"),
    ({"ode_order": 7}, "unknown multistep order 7"),
])
def test_bad_options_are_refused_in_one_line_before_a_record(opts, message):
    from common.errors import NfebenchError

    with pytest.raises(NfebenchError) as err:
        _run(40, **opts)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_model_without_a_noise_level_posterior_is_refused():
    from sampling.schedules import make_noise_schedule

    class Plain:  # a denoiser with no noise_level_logits, as a neural checkpoint
        noise, shape = make_noise_schedule("vp_linear"), (1, 4, 4)

        def __call__(self, x, t, cond=None):
            return x

    from common.errors import NfebenchError

    ts = make_grid(Plain.noise, 4, "logsnr")
    with pytest.raises(NfebenchError, match="needs a noise-level posterior: model Plain has no noise_level_logits"):
        dlg.sample_dlg(CountedDenoiser(Plain(), None), torch.zeros(2, 1, 4, 4), ts, Plain.noise,
                       SampleNoise(0, range(2), (1, 4, 4)))


def test_golden_full_loop():
    """Regression golden from this implementation (no reference run: the reference needs a trained noise-level
    classifier whose weights are not published), taken after the invariance and zero-step tests above passed:
    gaussian (1x4x4) vp_linear, dlg defaults (dpmpp ODE, 20 + 10 chain steps, argmax), nfe 40, 6 samples of
    seed 0 through launch.run's plan and batch loop: (mean, mean |x|)."""
    p, stats, x = _run(40)
    assert stats.counted == 40 and p.steps == 9
    assert float(x.mean()) == pytest.approx(GOLDEN[0], rel=1e-9, abs=1e-12)
    assert float(x.abs().mean()) == pytest.approx(GOLDEN[1], rel=1e-9)


GOLDEN = (-0.008432810136837604, 0.47683029653095393)


# --- persistent chains: sample i is chain i mod C's round i // C ---------------------------------------------------

CHAIN = {"burn_in": 5, "mcmc_steps": 4, "posterior": "sample"}


def test_persistent_chains_with_a_chain_per_sample_are_the_per_sample_mode_bit_for_bit():
    """Chain j starts from sample j's prior draw and continues sample j's stream: with C >= the samples every sample
    is its chain's round 0, which is the per-sample chain. The burn-in moves from the per-sample NFE to set-up, so
    the persistent budget is burn_in lower for the same ODE steps."""
    p1, s1, x1 = _run(40, **CHAIN)
    p2, s2, x2 = _run(35, chains="persistent", num_chains=8, **CHAIN)
    assert p1.steps == p2.steps and torch.equal(x1, x2)
    assert (s1.counted, s2.counted) == (40, 35) and s1.setup is None
    assert s2.setup == {"row_evals": 6 * 5, "network_evals": s2.setup["network_evals"], "nfe_per_sample": 5.0}


def test_a_later_round_continues_its_chain():
    """Sample C + j is chain j after burn_in + mcmc_steps sweeps: the per-sample chain of sample j with that much
    burn-in, bit for bit -- so samples j and C + j share a chain (correlated), as the record says."""
    c = 3
    _, _, persistent = _run(35, n=6, chains="persistent", num_chains=c, **CHAIN)
    _, _, longer = _run(44, n=c, **{**CHAIN, "burn_in": CHAIN["burn_in"] + CHAIN["mcmc_steps"]})
    assert torch.allclose(persistent[c:], longer, rtol=0, atol=1e-12)  # rows evaluated in other groups
    assert not torch.allclose(persistent[:c], persistent[c:])


def test_persistent_samples_do_not_depend_on_batching_or_sharding_and_replays_are_set_up():
    """10 samples from 3 chains, in batches of 10, 4 (straddling rounds) and 1, and as two shards; a shard starting
    at sample 5 first replays the chains' earlier rounds, counted as set-up, never in the per-sample NFE."""
    opts = {"chains": "persistent", "num_chains": 3, **CHAIN}
    outs, setups = [], []
    for bs in (10, 4, 1):
        p, stats, x = _run(35, n=10, bs=bs, **opts)
        outs.append(x)
        setups.append(stats.setup["row_evals"])
        assert stats.counted == 35 == p.cost
    for x in outs[1:]:
        assert torch.allclose(outs[0], x, rtol=0, atol=1e-12)
    assert setups == [3 * 5] * 3  # each chain burns in once, whatever the batching
    _, head, first = _run(35, n=5, bs=2, **opts)
    _, tail, second = _run(35, n=5, bs=2, offset=5, **opts)
    assert torch.allclose(torch.cat([first, second]), outs[0], rtol=0, atol=1e-12)
    # the shard's chains 2 (round 1), 0 and 1 (round 2) catch up: 3 burn-ins and 1 + 2 + 2 earlier rounds
    assert tail.setup["row_evals"] == 3 * 5 + 5 * 4 and head.setup["row_evals"] == 3 * 5


def test_a_replayed_batch_restarts_its_chains():
    """The batch loop replays a non-finite batch with the same run state: a chain already past the round starts
    again, so the replay gives the same samples."""
    model = gaussian()
    spec = get_solver("dlg")
    opts = {**compose_cfg("solver=dlg")["solver"], "chains": "persistent", "num_chains": 2, **CHAIN}
    opts.pop("name")
    ts = make_grid(model.noise, 12, "logsnr")
    pool = spec.run_state(0, model.shape, torch.float64, "cpu", **opts)
    outs = []
    for _ in range(2):
        rng = SampleNoise(0, range(2, 4), model.shape)
        x = float(model.noise.sigma(ts[0])) * rng.draw()
        outs.append(spec.fn(CountedDenoiser(model, None), x, ts, model.noise, rng, run_state=pool, **opts))
    assert torch.equal(outs[0], outs[1])


def test_persistent_record_through_launch(tmp_path):
    r = launch("model=gaussian", "solver=dlg", "nfe=20", "num_samples=6", "batch_size=4", "solver.chains=persistent",
               "solver.num_chains=4", "solver.burn_in=6", "solver.mcmc_steps=3", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "record.json").read_text())
    nfe, solver = rec["nfe"], rec["solver"]
    assert nfe["counted"] == 20 == solver["nfe_per_sample"] == solver["paper_nfe_approx"]
    assert nfe["setup"]["row_evals"] == 4 * 6 and nfe["setup"]["nfe_per_sample"] == pytest.approx(4)
    assert nfe["amortized_per_sample"] == pytest.approx(24)
    assert solver["nfe_burn_in_per_chain"] == 6 and solver["num_chains"] == 4 and "correlated" in solver["chains"]


@pytest.mark.parametrize("args,message", [(["solver.chains=shared"], "unknown dlg chains 'shared'"),
                                          (["solver.chains=persistent", "solver.num_chains=0"], "num_chains >= 1")])
def test_bad_chain_options_are_one_line_errors(tmp_path, args, message):
    r = launch("model=gaussian", "solver=dlg", "nfe=40", "num_samples=4", "batch_size=4", *args,
               f"hydra.run.dir={tmp_path}")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("nfebench: error:") and message in err[0], r.stderr
    assert not (tmp_path / "record.json").exists()


@pytest.mark.parametrize("offset,n,bs", [(0, 10, 4), (5, 5, 2), (7, 2, 2), (0, 2, 2)])
def test_the_dry_run_estimates_the_set_up_a_run_counts(offset, n, bs):
    from launch.dry_run import plan_run

    opts = {"chains": "persistent", "num_chains": 3, **CHAIN}
    _, stats, _ = _run(35, n=n, bs=bs, offset=offset, **opts)
    est = plan_run(_cfg(35, n, bs, offset, **opts))
    assert est["setup_row_evals"] == stats.setup["row_evals"] > 0
    assert est["nfe_x_samples"] == 35 * n + stats.setup["row_evals"]
    assert plan_run(_cfg(40, n, bs, offset, **CHAIN))["setup_row_evals"] == 0  # per-sample chains: all in the NFE
