"""DC-Solver (Zhao, Wang, Zhou & Lu, ECCV 2024): UniPC with dynamic compensation.

UniPC's corrector reuses the model evaluation taken at the predictor's x~_k, not at the corrected x_k,
so the newest prediction m_k is misaligned with the state it is used from. Before each predictor step
DC-Solver replaces m_k by the Lagrange interpolant through the last dc_order + 1 predictions (in the
model time t, as the reference code), evaluated at t' = rho_k t_k + (1 - rho_k) t_{k-1}; the
replacement stays in the history (the next corrector and later steps use it). rho = 1 is UniPC.

The ratios are fitted once per (model, grid) in the calibration stage, as the reference's search:
step by step, AdamW from rho = 1 on the mean squared distance after that step (predictor, then the
corrector through its model call) to a reference trajectory from a few noises, the earlier ratios
already applied. Steps with fewer than dc_order + 1 predictions keep rho = 1. Cascade polynomial
regression (cpr.py) predicts the ratios of unseen step counts from fits at several (rho_source=predict).
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

from common.errors import NfebenchError
from common.registry import check_choice
from ..calibration import Need
from ..registry import register_solver
from ..timesteps import make_grid
from . import cpr
from .expint import lagrange_basis
from .grid import per_run
from .multistep import combine
from .orders import describe_multistep
from .unic import B_FUNCTIONS, fused_plan, plan

RHO_SOURCES = ("fit", "predict", "ones")
REFERENCES = ("auto", "exact", "solve")


def compensation(t, k: int, dc_order: int, rho):
    """Weights on (m_k, m_{k-1}, ...) of the interpolant at t' = rho t_k + (1 - rho) t_{k-1}.

    In the step's own unit u = (t - t_{k-1}) / (t_k - t_{k-1}), t' is u = rho; rho may be a float or a
    tensor (the fit differentiates through the weights)."""
    nodes = [(t[k - j] - t[k - 1]) / (t[k] - t[k - 1]) for j in range(dc_order + 1)]
    return [sum(float(c) * rho**d for d, c in enumerate(ell)) for ell in lagrange_basis(nodes)]


def walk(model, x, t, keep, pred, corr, corrector: bool, depth: int, compensate):
    """UniPC's loop (unipc.py), with m_k replaced by sum_j w_j m_{k-j} where compensate(k, x_k, history) gives w."""
    history, x_prev = deque(maxlen=depth), x  # predictions newest first; x_prev is the (corrected) x_k
    for k in range(len(keep)):
        m = model(x, t[k])
        if k > 0 and corrector:
            x = combine(keep[k - 1], x_prev, corr[k - 1], [m, *history])  # UniC: step k-1 again, with m_k
        history.appendleft(m)
        w = compensate(k, x, history)
        if w is not None:
            history[0] = combine(w[0], m, w[1:], [*history][1:])  # DC: m_k -> interpolant at t'
        x_prev = x
        x = combine(keep[k], x, pred[k], history)  # UniP
    return x


def _check(order=3, variant="bh1", dc_order=2, rho_source="fit", iterations=40, lr=0.1, n_noises=10,
           reference="auto", ref_substeps=20, cpr_nfes=None, cpr_degree=3, **_):
    check_choice("dc_solver rho_source", rho_source, RHO_SOURCES)
    check_choice("dc_solver reference", reference, REFERENCES)
    check_choice("dc_solver variant", variant, B_FUNCTIONS)
    for name, v, lo in (("dc_order", dc_order, 1), ("iterations", iterations, 1), ("n_noises", n_noises, 1),
                        ("ref_substeps", ref_substeps, 1), ("cpr_degree", cpr_degree, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise NfebenchError(f"solver.{name} must be an integer >= {lo}; got {v!r}")
    if dc_order > 3:
        raise NfebenchError(f"solver.dc_order must be 1, 2 or 3 (the reference interpolates at most 4 points); "
                            f"got {dc_order}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise NfebenchError(f"solver.lr must be a number > 0; got {lr!r}")
    if rho_source == "predict":
        nfes = list(cpr_nfes or [])
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > dc_order for n in nfes) or len(nfes) < 2:
            raise NfebenchError(f"solver.rho_source=predict needs solver.cpr_nfes: two or more step counts "
                                f"> dc_order={dc_order} to fit on; got {cpr_nfes!r}")


def _describe(steps, order=3, variant="bh1", lower_order_final="always", corrector=True, dc_order=2,
              rho_source="fit", **opts):
    _check(order=order, variant=variant, dc_order=dc_order, rho_source=rho_source, **opts)
    return {**describe_multistep(steps, order, lower_order_final),
            "corrector_steps": max(steps - 1, 0) if corrector else 0,
            "compensated_steps": max(steps - dc_order, 0) if rho_source != "ones" else 0}


def _ratios(calibration, rho_source, steps, dc_order):
    if rho_source == "ones":
        return [1.0] * steps
    if calibration is None:
        raise NfebenchError(f"dc_solver rho_source={rho_source} needs its calibration arrays (launch.py computes them)")
    if rho_source == "predict":
        return cpr.predict(calibration["cpr_coeffs"], steps, dc_order=dc_order).tolist()
    rho = calibration["rho"].tolist()
    if len(rho) != steps:
        raise NfebenchError(f"dc_solver: {len(rho)} calibrated ratios for a grid of {steps} steps")
    return rho


def _reference(model, x_start, t, noise, reference, ref_substeps, order, variant, corrector):
    """The states at t_1..t_N from x_start: the model's exact ODE solution where it has one (analytic models),
    else a many-step solve (UniPC, ref_substeps uniform steps in t per interval, as the reference's 200-step DDIM)."""
    has_exact = hasattr(model, "ode_solution")
    if reference == "exact" and not has_exact:
        raise NfebenchError("dc_solver reference=exact needs a model with an exact ODE solution (gaussian, digits); "
                            "use solver.reference=solve")
    states, x = [], x_start
    for a, b in zip(t[:-1], t[1:]):  # interval by interval from the previous reference state
        if reference != "solve" and has_exact:
            x = model.ode_solution(x, a, b)
        else:
            x = walk(model, x, *plan(noise, np.linspace(a, b, ref_substeps + 1), order, variant, "always"),
                     corrector, 3, lambda *_: None)
        states.append(x)
    return states


def fit_ratios(model, device, ts, noise, dtype, order, variant, lower_order_final, corrector, dc_order,
               iterations, lr, n_noises, fit_seed, reference, ref_substeps) -> np.ndarray:
    """rho_k for every step of the grid ts (1 where not compensated), fitted greedily as the reference's search."""
    t, keep, pred, corr = plan(noise, ts, order, variant, lower_order_final)
    z = torch.randn((n_noises, *model.shape), generator=torch.Generator().manual_seed(fit_seed), dtype=dtype)
    x_start = float(noise.sigma(ts[0])) * z.to(device)
    if hasattr(model, "conditions") and model.cond is None:  # class-conditional: the fit noises get labels too
        model.cond = model.conditions(fit_seed, range(n_noises))
    rhos = []

    def compensate(k, x, history):
        if k < dc_order:
            rhos.append(1.0)
            return None
        rho = torch.nn.Parameter(torch.ones((), dtype=torch.float64, device=device))
        opt = torch.optim.AdamW([rho], lr=lr)
        for _ in range(iterations):
            opt.zero_grad()
            with torch.enable_grad():
                moved = [sum(w * m for w, m in zip(compensation(t, k, dc_order, rho), history)), *[*history][1:]]
                out = combine(keep[k], x, pred[k], moved)
                if corrector and k + 1 < len(keep):  # the loss sees the corrected state, through its model call
                    out = combine(keep[k], x, corr[k], [model(out, t[k + 1]), *moved])
                (out - targets[k]).square().mean().backward()
            opt.step()
        rhos.append(float(rho.detach()))
        return compensation(t, k, dc_order, rhos[-1])

    with torch.no_grad():
        targets = _reference(model, x_start, t, noise, reference, ref_substeps, order, variant, corrector)
        walk(model, x_start, t, keep, pred, corr, corrector, max(3, dc_order + 1), compensate)
    return np.array(rhos)


def _calibration(ts, noise, dtype, order=3, variant="bh1", lower_order_final="always", corrector=True, dc_order=2,
                 rho_source="fit", iterations=40, lr=0.1, n_noises=10, fit_seed=0, reference="auto",
                 ref_substeps=20, cpr_nfes=None, cpr_grid="time_uniform", cpr_degree=3):
    """The Need of a run: the ratios of its grid (fit), or the regression over the cpr_nfes grids (predict)."""
    _check(order, variant, dc_order, rho_source, iterations, lr, n_noises, reference, ref_substeps, cpr_nfes,
           cpr_degree)
    if rho_source == "ones":
        return None
    opts = {"order": int(order), "variant": variant, "lower_order_final": str(lower_order_final),
            "corrector": bool(corrector), "dc_order": dc_order, "iterations": iterations, "lr": float(lr),
            "n_noises": n_noises, "fit_seed": fit_seed, "reference": reference, "ref_substeps": ref_substeps}
    if rho_source == "fit":
        grids = [np.asarray(ts, dtype=np.float64)]
    else:
        own = make_grid(noise, len(ts) - 1, cpr_grid, t_end=float(ts[-1]))
        if own.shape != np.shape(ts) or not np.allclose(own, ts, rtol=1e-12, atol=0.0):
            raise NfebenchError(f"dc_solver rho_source=predict regresses over solver.cpr_grid={cpr_grid} grids, "
                                f"but this run walks another grid; use schedule={cpr_grid} or set solver.cpr_grid")
        grids = [make_grid(noise, n, cpr_grid, t_end=float(ts[-1])) for n in sorted(set(cpr_nfes))]
    settings = {"rho_source": rho_source, "dtype": str(dtype), **opts, "grids": [g.tolist() for g in grids],
                **({"cpr_degree": cpr_degree} if rho_source == "predict" else {})}

    def compute(model, device):
        fits = [fit_ratios(model, device, g, noise, dtype, **opts) for g in grids]
        if rho_source == "fit":
            return {"rho": fits[0]}
        # one model config is one guidance scale: the regression's guidance axis stays constant
        coeffs = cpr.fit({(0.0, len(r)): r for r in fits}, dc_order=dc_order, degree=cpr_degree)
        return {"cpr_coeffs": coeffs, **{f"rho_{len(r)}": r for r in fits}}

    return Need("dc_ratios", settings, compute)


@register_solver("dc_solver", describe=_describe, calibration=_calibration)
def sample_dc_solver(model, x, ts, noise, rng=None, order: int = 3, variant="bh1", lower_order_final="always",
                     corrector: bool = True, dc_order: int = 2, rho_source="fit", iterations: int = 40, lr: float = 0.1,
                     n_noises: int = 10, fit_seed: int = 0, reference="auto", ref_substeps: int = 20, cpr_nfes=None,
                     cpr_grid="time_uniform", cpr_degree: int = 3, calibration=None):
    variant = check_choice("dc_solver variant", variant, B_FUNCTIONS)
    rho = _ratios(calibration, check_choice("dc_solver rho_source", rho_source, RHO_SOURCES), len(ts) - 1, dc_order)
    t, steps, dc = _plan(noise, ts, int(order), variant, lower_order_final, bool(corrector), dc_order,
                         tuple(float(r) for r in rho))
    history = deque(maxlen=max(4, dc_order + 1))  # predictions newest first (m_k compensated once used)
    ours = deque(maxlen=history.maxlen)  # which entries are the solver's own buffers (compensated)
    for k, (keep, w) in enumerate(steps):
        spare = history[-1] if len(history) == history.maxlen and ours[-1] else None  # about to drop out
        history.appendleft(model(x, t[k]))
        ours.appendleft(False)
        x = combine(keep, x, w, history)  # UniPC's one fused combination per step (unic.fused_plan), DC folded in
        if dc[k] is not None:  # m_k -> interpolant at t', into the buffer that dropped out
            history[0] = combine(dc[k][0], history[0], dc[k][1:], [*history][1:], out=spare)
            ours[0] = True
    return x


@per_run
def _plan(noise, ts, order, variant, lower_order_final, corrector, dc_order, rho: tuple):
    """Model times, each step's fused weights with DC folded in, and each step's compensation weights (or None)."""
    t, steps = fused_plan(noise, ts, order, variant, lower_order_final, corrector)
    dc = [None if r == 1.0 or k < dc_order else compensation(t, k, dc_order, r) for k, r in enumerate(rho)]
    return t, _compensated(steps, plan(noise, ts, order, variant, lower_order_final)[2], dc), dc


def _compensated(steps, pred, dc):
    """Each step's fused weights with m_k replaced by its interpolant sum_j c_j m_{k-j} in the predictor: the
    folded-in corrector of step k-1 keeps the raw m_k (as UniC evaluated it), so only P_k's weight on m_k moves,
    by P_k[0] (c - e_0). Steps without compensation keep UniPC's weights exactly."""
    out = []
    for (keep, w), p, c in zip(steps, pred, dc):
        if c is not None:
            c = [cj - (j == 0) for j, cj in enumerate(c)] + [0.0] * (len(w) - len(c))
            w = tuple(wj + p[0] * cj for wj, cj in zip(w, c)) + tuple(p[0] * cj for cj in c[len(w):])
        out.append((keep, w))
    return out
