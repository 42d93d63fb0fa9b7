"""USF per-step plans: plans of one family are that solver bit for bit, the Taylor update matches USF's own
code, orders, NFE counted from the plan through launch.py, one-line errors, and the replay configs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.errors import NfebenchError
from helpers import compose_cfg, fitted_order_nfe, gaussian, launch, solve_steps, x_noise
from launch.dry_run import plan_run
from launch.run import plan as run_plan
from models.counter import CountedDenoiser
from sampling.registry import get_solver
from sampling.solvers import usf
from sampling.solvers.orders import multistep_orders
from sampling.timesteps import make_grid

F64 = pytest.mark.usefixtures("float64_default")


def _plan(family, orders, corrector=False, **kw):
    """One entry per step; a corrector on every step but the last (as UniPC's loop), if asked."""
    return [{"family": family, "order": o, "corrector": corrector and k < len(orders) - 1, **kw}
            for k, o in enumerate(orders)]


# --- one family = that solver, bit for bit (same weight builders, same loop arithmetic) ---------------------

@F64
@pytest.mark.parametrize("steps", [5, 12])   # 5: lower_order_final applies (below_10), 12: it does not
@pytest.mark.parametrize("grid", ["logsnr", "time_uniform"])
def test_all_dpmpp_plan_is_dpmpp(steps, grid):
    model = gaussian()
    ref, _, _, c_ref = solve_steps(model, "dpmpp", steps, grid=grid, n=4)
    plan = _plan("dpmpp", multistep_orders(steps, 2, "below_10"))
    got, _, _, c = solve_steps(model, "usf", steps, grid=grid, n=4, plan=plan)
    assert torch.equal(got, ref) and c.count == c_ref.count == steps
    # the same plan from the solver-level values
    same, _, _, _ = solve_steps(model, "usf", steps, grid=grid, n=4, family="dpmpp", corrector=False,
                                lower_order_final="below_10")
    assert torch.equal(same, ref)
    # and a plan that differs in one step's order differs
    plan[-2]["order"] = 1
    other, _, _, _ = solve_steps(model, "usf", steps, grid=grid, n=4, plan=plan)
    assert not torch.allclose(other, ref, atol=1e-6)


@F64
@pytest.mark.parametrize("order,variant", [(3, "bh1"), (2, "bh2")])
def test_all_unipc_plan_is_unipc(order, variant):
    model = gaussian()
    ref, _, _, c_ref = solve_steps(model, "unipc", 8, n=4, order=order, variant=variant)
    plan = _plan("unipc", multistep_orders(8, order, "always"), corrector=True)
    got, _, _, c = solve_steps(model, "usf", 8, n=4, plan=plan, variant=variant)
    # both fold each corrector into the next predictor (unic.fused_plan, usf.fused_steps), each building its
    # weights in its own order: equal to rounding, not bit for bit
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-13)
    assert c.count == c_ref.count == 8
    no_c, _, _, _ = solve_steps(model, "unipc", 8, n=4, order=order, variant=variant, corrector=False)
    plan = _plan("unipc", multistep_orders(8, order, "always"))
    got, _, _, _ = solve_steps(model, "usf", 8, n=4, plan=plan, variant=variant)
    assert torch.equal(got, no_c)


@F64
def test_all_dpm_solver_plan_is_multistep_dpm_solver():
    model = gaussian()
    ref, _, _, _ = solve_steps(model, "dpm_solver", 7, n=4, method="multistep", order=3)
    got, _, _, _ = solve_steps(model, "usf", 7, n=4, plan=_plan("dpm_solver", multistep_orders(7, 3, "below_10")))
    # dpm_solver's multistep loop keeps sigma*eps in its history with 1/sigma in the weights (multistep.run)
    # where usf keeps eps: the same update rounded differently, so equal to rounding, not bit for bit
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-13)


@F64
def test_taylor_order_3_is_dpmpp_3m_with_the_exact_weight():
    # USF's Taylor terms h^i E_{i+1} m^(i) with the quadratic's derivatives are E_2 D1 + 2 E_3 D2: 3M "exact";
    # computed through a linear solve instead of divided differences, so equal to rounding, not bit for bit.
    # (Its order-2 steps are not 2M: 2M puts E_1/2 where the Taylor term has E_2, so the warm-up step is dpmpp's.)
    model = gaussian()
    ref, _, _, _ = solve_steps(model, "dpmpp", 9, grid="karras", n=4, order=3, variant="exact",
                               lower_order_final="never")
    plan = [{"order": 1}, {"family": "dpmpp", "order": 2}, *[{"order": 3}] * 7]
    got, _, _, _ = solve_steps(model, "usf", 9, grid="karras", n=4, plan=plan, corrector=False)
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)
    plan[1]["family"] = "taylor"
    other, _, _, _ = solve_steps(model, "usf", 9, grid="karras", n=4, plan=plan, corrector=False)
    assert not torch.allclose(other, ref, rtol=0, atol=1e-6)


# --- USF's own update: a golden full loop from thu-nics/USF --------------------------------------------------

# thu-nics/USF uni_sampler.py (commit 5b89ef5), uni_sampler.sample run once on CPU in float64 with this
# gaussian model (vp_linear = its NoiseScheduleVP("linear", 0.1, 20)) wrapped as a noise predictor, on the
# 6-step logsnr grid, x = sigma(T) * x_noise(); decisions: start_points -1, derivative_types
# Difference_{p-1} (default active points) with "linear" relaxation on the first derivative, corrector_types
# pseudo (start -2, taylor_order p + 1, unrelaxed) where "corrector", afs no_afs. It made 7 model calls and
# returned out.reshape(3, -1)[:, 0] = FIRST, out.sum() = SUM.
USF_PLAN = [{"order": 1, "prediction": "data", "corrector": True},
            {"order": 2, "prediction": "noise", "corrector": False, "relaxation": 0.1},
            {"order": 3, "prediction": "data", "corrector": True},
            {"order": 3, "prediction": "noise", "corrector": True},
            {"order": 2, "prediction": "data", "corrector": False, "relaxation": -0.05},
            {"order": 2, "prediction": "data", "corrector": True}]
USF_FIRST = [-1.5310258085497657, -0.10693585918307805, -0.45002699466498347]
USF_SUM = -5.254667193614204


@F64
def test_taylor_plan_matches_usf_reference_code():
    model = gaussian()
    ts = make_grid(model.noise, 6, "logsnr")
    x = float(model.noise.sigma(ts[0])) * x_noise(model.shape)
    counter = CountedDenoiser(model, None)
    plan = [{"family": "taylor", **e} for e in USF_PLAN]
    out = get_solver("usf").fn(counter, x, ts, model.noise, None, plan=plan)
    assert counter.count == 7 == get_solver("usf").cost(6, plan=plan)  # the corrector after the last step: +1
    assert np.allclose(out.reshape(3, -1)[:, 0].numpy(), USF_FIRST, rtol=0, atol=1e-12)
    assert float(out.sum()) == pytest.approx(USF_SUM, abs=1e-11)


@F64
def test_analytical_first_step_saves_the_first_call():
    model = gaussian()
    full, _, _, c_full = solve_steps(model, "usf", 8, n=4)
    afs, _, _, c_afs = solve_steps(model, "usf", 8, n=4, afs="zero_x0")
    assert (c_full.count, c_afs.count) == (8, 7) and get_solver("usf").cost(8, afs="zero_x0") == 7
    assert c_afs.times[0] == pytest.approx(make_grid(model.noise, 8, "logsnr")[1])  # t_0 is never evaluated
    # x0(x_T) = 0 is nearly what the model says at T on this VP schedule (alpha_T = 0.0066)
    assert float((afs - full).norm() / full.norm()) < 0.05 and not torch.equal(afs, full)


# --- orders (Karras and log-SNR grids, as tests/test_solvers_orders.py) --------------------------------------

# measured (karras / logsnr): order 1: 0.98 / 0.98; 2: 2.11 / 2.02; 2 + corrector: 3.08 / 3.01;
# noise prediction 2: 2.02 / 1.96, + corrector: 2.97 / 2.95 (order 3: 3.08 / 4.01, as dpmpp 3M exact)
ORDER_CASES = [({"order": 1, "corrector": False}, 1), ({"order": 2, "corrector": False}, 2),
               ({"order": 2, "corrector": True}, 3), ({"order": 2, "prediction": "noise", "corrector": True}, 3)]


@F64
@pytest.mark.parametrize("opts,expected", ORDER_CASES, ids=[str(c[0]) for c in ORDER_CASES])
@pytest.mark.parametrize("grid", ["karras", "logsnr"])
def test_taylor_steps_fit_order_p_and_p_plus_1_with_corrector(opts, expected, grid):
    order = fitted_order_nfe(gaussian(), "usf", [32, 64, 128], grid, lower_order_final="never", **opts)
    assert abs(order - expected) <= 0.3, f"{opts} on {grid}: fitted {order:.2f}"


# --- plan checks: one line each ------------------------------------------------------------------------------

@pytest.mark.parametrize("plan,match", [
    ([{"family": "heun", "order": 1}] * 3, "unknown usf family"),
    ([{"order": 0}] * 3, "order must be an integer in 1..1"),
    ([{"order": 1}, {"order": 3}, {"order": 1}], r"step 1: order must be an integer in 1..2"),
    ([{"order": 1}] * 4, "usf plan has 4 steps but the grid has 3"),
    ([{"order": 1, "stages": 2}] * 3, "unknown key 'stages'"),
    ([{"order": 1, "prediction": "v"}] * 3, "unknown usf prediction"),
    ([{"family": "dpmpp", "order": 1, "relaxation": 0.1}] * 3, "relaxation scales"),
    ([{"family": "dpm_solver", "order": 1, "prediction": "data"}] * 3,
     "prediction is a taylor step's choice, not dpm_solver's"),
    ([{"order": 1}, {"order": 1}, {"order": 2, "estimate": [3]}],
     r"step 2: estimate must list 1 point counts, the i-th in i\.\.2"),
    ([{"order": 1}, {"order": 1}, {"order": 3, "estimate": [2]}], "estimate must list 2 point counts"),
    ([{"order": 1, "corrector": True, "corrector_order": 3}] + [{"order": 1}] * 2,
     r"corrector_order needs corrector: true and an integer in 2\.\.2"),
    ([{"order": 1, "corrector": False, "corrector_order": 2}] + [{"order": 1}] * 2,
     "corrector_order needs corrector: true"),
    ("dpmpp", "list of step mappings"),
])
def test_bad_plans_are_one_line_errors(plan, match):
    with pytest.raises(NfebenchError, match=match) as err:
        usf.step_plans(3, plan)
    assert "\n" not in str(err.value)


def test_launch_counts_the_plan_and_refuses_what_exceeds_nfe(tmp_path):
    plan = "[{family:dpmpp,order:1},{family:unipc,order:2,corrector:true},{order:2,corrector:true}]"
    r = launch("model=digits", "solver=usf", f"solver.plan={plan}", "nfe=4", "num_samples=8", "batch_size=8",
               "metrics=none", f"hydra.run.dir={tmp_path / 'ok'}")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "ok" / "record.json").read_text())
    assert rec["nfe"]["counted"] == 4 and rec["solver"]["steps"] == 3  # 3 steps + the last step's corrector
    # missing keys take the solver-level values (family taylor, corrector true): step 0 is corrected, for free
    assert rec["solver"]["step_plan"] == ["dpmpp1+c", "unipc2+c", "taylor-data2+c"]
    bad = launch("model=digits", "solver=usf", f"solver.plan={plan}", "nfe=3", "num_samples=8",
                 f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and bad.stderr.startswith("nfebench: error:") and bad.stderr.count("\n") == 1
    assert "needs 4 NFE for 3 steps but the budget is nfe=3" in bad.stderr
    assert not (tmp_path / "bad" / "record.json").exists()
    short = launch("model=digits", "solver=usf", "solver.plan=[{order:1},{order:2}]", "schedule=explicit",
                   "schedule.ts=[0.9,0.5,0.2,0.05]", "nfe=5", "num_samples=8", f"hydra.run.dir={tmp_path / 'len'}")
    assert short.returncode == 2 and short.stderr.count("\n") == 1, short.stderr
    assert "usf plan has 2 steps but the grid has 3" in short.stderr


# --- replay configs (configs/replay/): published time-step lists ---------------------------------------------

# USF's lists hold NFE + 1 steps; its analytical first step saves one evaluation (afs=zero_x0 here)
USF_REPLAYS = [(m, n) for m in ("cifar10_edm", "cifar10_scoresde_vp") for n in range(3, 11)]


@pytest.mark.parametrize("model,nfe", USF_REPLAYS)
def test_usf_replays_plan_their_published_nfe(model, nfe):
    cfg = compose_cfg(f"+replay=usf_{model}_nfe{nfe}")
    p = run_plan(cfg)
    assert cfg["model"]["name"] == model and cfg["nfe"] == nfe and p.spec.name == "usf"
    assert p.steps == nfe + 1 and p.cost == nfe and p.ts[0] == p.noise.T
    assert plan_run(cfg)["counted"] == nfe
    # any solver walks the same list (README): dpmpp without the analytical first step spends one more NFE
    other = run_plan(compose_cfg(f"+replay=usf_{model}_nfe{nfe}", "solver=dpmpp", "~solver.afs", f"nfe={nfe + 1}"))
    assert other.spec.name == "dpmpp" and np.array_equal(other.ts, p.ts) and other.cost == nfe + 1


# thu-nics/USF uni_sampler.py (commit 5b89ef5) run once on CPU in float64 on this gaussian model with the decision
# file codebases/score_sde/solver_schedules/cifar10_sde_nfe9.pth loaded as published (timesteps cast to float64,
# skip_coefficients dropped: all 1.0), x = sigma(t_0) * x_noise(): 9 model calls, out.reshape(3, -1)[:, 0] and sum:
USF_NFE9_FIRST = [-1.4251911913493616, -0.12639889655099032, -0.43162824087409857]
USF_NFE9_SUM = -5.241305292810998


@F64
def test_full_plan_replay_is_usf_reference_code_on_gaussian():
    cfg = compose_cfg("+replay=usf_cifar10_scoresde_vp_nfe9_plan")
    p = run_plan(cfg)
    assert (p.steps, p.cost, cfg["nfe"]) == (10, 9, 9) and p.solver_opts["afs"] == "unit_noise"
    model = gaussian()  # vp_linear, USF's NoiseScheduleVP("linear"); the replay's model is only planned here
    x = float(model.noise.sigma(p.ts[0])) * x_noise(model.shape)
    counter = CountedDenoiser(model, None)
    out = p.spec.fn(counter, x, p.ts, model.noise, None, **p.solver_opts)
    assert counter.count == 9
    assert np.allclose(out.reshape(3, -1)[:, 0].numpy(), USF_NFE9_FIRST, rtol=0, atol=1e-12)
    assert float(out.sum()) == pytest.approx(USF_NFE9_SUM, abs=1e-11)


# AutoDiffusion's examples/guided_diffusion/sample_LSUN_bedroom_subnet.sh, --use_timestep (written here again,
# independently of the config file)
AUTODIFFUSION_BEDROOM = [644, 737, 67, 804, 134, 871, 6, 639, 268, 335, 402, 469, 536, 603, 670]


def test_autodiffusion_replay_walks_the_sorted_published_steps_with_ddim(tmp_path):
    cfg = compose_cfg("+replay=autodiffusion_lsun_bedroom_15")
    p = run_plan(cfg)
    n = np.rint(p.ts * 1000 - 1).astype(int)
    assert n.tolist() == sorted(AUTODIFFUSION_BEDROOM, reverse=True)
    assert np.allclose(p.ts, (n + 1) / 1000, rtol=0, atol=1e-15)
    assert (p.spec.name, p.steps, p.final_x0, p.cost) == ("ddim", 14, True, 15)
    r = launch("+replay=autodiffusion_lsun_bedroom_15", "dry_run=true", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert "lsun_bedroom_ddpm" in r.stdout and " 15 " in r.stdout
