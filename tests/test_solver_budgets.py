"""Every registered solver x every budget from its minimum to 50 NFE, through launch.run's own
plan() and sample_batches(): finite samples and counted NFE equal to the solver's declared cost
(never above the budget), or a clean NfebenchError refusal below the minimum. Never a silent
overrun (the counter raises) or a NaN.

Solvers come from the registry, so solvers added later are covered without touching this file;
each runs with its configs/solver/<name>.yaml options and recommended schedule, plus the option
variants below that change the step/NFE rule (degenerate budgets included).
"""
from __future__ import annotations

import pytest
import torch

from launch import calibration
from launch.run import load_model, plan, sample_batches
from common.errors import NfebenchError
from sampling.registry import get_solver

from helpers import solver_cases

MAX_NFE = 50
MODEL = {"family": "gaussian", "shape": [1, 4, 4], "noise_schedule": {"name": "vp_linear"}, "dtype": "float64"}

# Options that change how a budget becomes steps (or make low budgets degenerate).
VARIANTS = {
    "dpmpp": [{"order": 3}, {"method": "singlestep", "order": 2}, {"method": "singlestep", "order": 3},
              {"method": "singlestep", "order": 3, "outer_grid": "fine"}],
    "dpm_solver": [{"order": 2}, {"order": 1, "outer_grid": "fine"}, {"method": "multistep", "order": 3}],
    "dpmpp_sde": [{"order": 1}],
    "unipc": [{"order": 2, "variant": "bh2"}, {"order": 3, "corrector": False, "lower_order_final": "never"}],
    "deis": [{"order": 2}, {"order": 3, "lower_order_final": "never"}, {"basis": "logrho"}],
    "pndm": [{"method": "s_pndm"}, {"method": "f_pndm"}, {"method": "f_pndm", "midpoint": "time"}],
    "score_sde_pc": [{"n_corrector": 0}, {"n_corrector": 2, "predictor": "euler_maruyama"}],
    "ipndm": [{"order": 2}],
    "heun": [{"final_euler": False}, {"S_churn": 10}],
    "euler": [{"S_churn": 10}],
    "ddpm": [{"variance": "fixed_large"}],
    "time_shift": [{"base": "ipndm"}, {"window": 0}],
    "dlg": [{"ode": "dpm_solver", "burn_in": 0, "mcmc_steps": 2}, {"posterior": "sample", "sigma_max": None, "ode_order": 3}],
    "dpm_solver_v3": [{"degenerated": True}, {"order": 2, "p_pseudo": True, "c_pseudo": False}],
}


@pytest.mark.parametrize("name,opts,schedule", list(solver_cases(VARIANTS)))
def test_every_solver_at_every_budget_spends_its_cost_or_refuses_cleanly(name, opts, schedule, tmp_path):
    spec = get_solver(name)
    solver_opts = {k: v for k, v in opts.items() if k != "name"}
    minimum = spec.min_nfe(**solver_opts)
    assert 1 <= minimum <= MAX_NFE
    for nfe in range(1, MAX_NFE + 1):
        cfg = {"nfe": nfe, "num_samples": 3, "batch_size": 3, "seed": 0, "sample_offset": 0, "t_end": None,
               "dtype": "float64", "model": dict(MODEL), "solver": dict(opts), "schedule": dict(schedule),
               "calibration": {"dir": str(tmp_path)}}  # calibrated solvers: computed once, then cached
        if nfe < minimum:
            with pytest.raises(NfebenchError):
                plan(cfg)
            continue
        p, out = plan(cfg), []
        spec, solver_opts, steps = p.spec, p.solver_opts, p.steps
        assert spec.cost(steps, **solver_opts) <= nfe
        model = load_model(cfg)
        calibrated = calibration.prepare(cfg, p, model, torch.device("cpu"))[0]
        counted = sample_batches(cfg, p, model, torch.device("cpu"), lambda x, x_start, idx: out.append(x),
                                 calibrated).counted
        assert counted == spec.cost(steps, **solver_opts) <= nfe, f"nfe={nfe}"
        assert torch.isfinite(out[0]).all() and out[0].shape == (3, 1, 4, 4)
        if spec.describe is not None:
            assert isinstance(spec.describe(steps, **solver_opts), dict)
