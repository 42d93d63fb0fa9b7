"""DPM-Solver-v3 (Zheng, Lu, Chen & Zhu, NeurIPS 2023): a multistep predictor-corrector whose
parameterisation comes from the model's empirical statistics l, s, b (ems.py) on a lambda grid.

With f = (sigma eps - l x) / alpha = (1 - l) x / alpha - x0 and the cumulative trapezoid integrals
over the EMS grid (from its noisiest end)
    L = int l,  S = int s,  I = int e^{L+S},  B = int e^{-S} b,  C = int e^{L+S} B,
the ODE becomes d(x/alpha)/dlambda = -l x/alpha - f, and with g_j = e^{S_s - S_j} f_j - e^{S_s}(B_j - B_s)
(the part of f that s and b do not explain, expanded around the step start s) one step s -> t is

    x_t = alpha_t/alpha_s e^{L_s - L_t} x_s - alpha_t e^{-L_t - S_s}(I_t - I_s) g_s
          - alpha_t e^{-L_t}(C_t - C_s - B_s (I_t - I_s))
          - sum_{m=1}^{n} alpha_t e^{L_s - L_t} int_s^t e^{L+S - L_s - S_s} (lambda - lambda_s)^m / m! g^(m)

with g^(m) estimated from past g's: by the Vandermonde solve (default) or by divided differences
(``p_pseudo``/``c_pseudo``, the paper's pseudo-order). Everything except f is a per-dimension array known
before sampling, so each step is x_t = K x_s + sum_j W_j f_j + c with K, W_j, c built once per run.
Step endpoints are snapped to the nearest EMS grid point, as the reference code does.

The corrector (UniPC-style, no extra NFE) redoes the step s -> t once the model has been evaluated at t,
with t among the nodes (order + 1 with ``c_pseudo``); f at t stays the value from the evaluation, as the
reference keeps sigma eps - l x fixed when it moves x. ``half: true`` limits the corrector to part of the
trajectory: ``half_rule: code`` (default) corrects where t > 0.5, as the reference code does and as its
published numbers were made; ``half_rule: paper`` where t <= 0.5, as its README and paper describe.
``degenerated: true`` uses l = 1, s = 0, b = 0 (no calibration): DPM-Solver++ up to the quadrature error.
"""
from __future__ import annotations

import functools
import weakref
import math
from collections import deque

import numpy as np
import torch

from common.errors import NfebenchError
from common.registry import check_choice
from sampling.calibration import Need
from ..registry import register_solver
from . import ems
from .orders import describe_multistep, multistep_orders

HALF_RULES = {"code": lambda t: t > 0.5, "paper": lambda t: t <= 0.5}
def _cumtrapz(y, lam):
    """int_{lam_0}^{lam_i} y, trapezoid rule, along axis 0 (y: (points, ...))."""
    d = np.diff(lam).reshape(-1, *([1] * (y.ndim - 1)))
    return np.concatenate([np.zeros_like(y[:1]), np.cumsum(0.5 * d * (y[1:] + y[:-1]), axis=0)])


def integrals(l, s, b, lam) -> dict:
    """The cumulative integrals L, S, I, B, C of the update, on the EMS grid."""
    L, S = _cumtrapz(l, lam), _cumtrapz(s, lam)
    I, B = _cumtrapz(np.exp(L + S), lam), _cumtrapz(np.exp(-S) * b, lam)
    return {"l": l, "lam": lam, "L": L, "S": S, "I": I, "B": B, "C": _cumtrapz(np.exp(L + S) * B, lam)}


def snap(noise, ts, lam) -> list[int]:
    """EMS grid index nearest to each grid time's lambda; steps must stay distinct."""
    pos = (np.asarray(noise.lam(np.asarray(ts, dtype=np.float64))) - lam[0]) / (lam[-1] - lam[0]) * (len(lam) - 1)
    idx = [int(i) for i in np.clip(np.round(pos), 0, len(lam) - 1)]
    if any(b <= a for a, b in zip(idx, idx[1:])):
        raise NfebenchError(f"dpm_solver_v3: {len(ts) - 1} steps do not fit on an EMS grid of {len(lam)} points "
                            f"(two steps snap to the same point); raise solver.ems_points")
    return idx


def derivative_weights(lams, pseudo: bool) -> np.ndarray:
    """w with g^(m) = sum_j w[m-1, j] g_j for the nodes lams (lams[0]: the expansion point)."""
    lams = np.asarray(lams, dtype=np.float64)
    n = len(lams) - 1
    if pseudo:  # divided differences, times m!
        D = np.eye(n + 1)
        out = []
        for i in range(1, n + 1):
            D = np.stack([(D[j] - D[j + 1]) / (lams[j] - lams[i + j]) for j in range(n - i + 1)])
            out.append(D[0] * math.factorial(i))
        return np.stack(out)
    # Taylor coefficients fitted through the nodes: R d = g_{1..n} - g_0, R[j, m] = (lam_j - lam_0)^(m+1)
    R = np.stack([(lams[1:] - lams[0]) ** m for m in range(1, n + 1)], axis=1)
    inv = np.linalg.inv(R) * np.array([math.factorial(m) for m in range(1, n + 1)])[:, None]
    return np.concatenate([-inv.sum(1, keepdims=True), inv], axis=1)


def step_coeffs(q, t: int, alpha_s, alpha_t, nodes, pseudo):
    """(K, [W_j], c) of x_t = K x_s + sum_j W_j f_j + c for the step from EMS index s = nodes[0] to t, with
    g^(m) taken through the EMS indices ``nodes`` (in the reference's order: the expansion point first)."""
    L, S, I, B, C, lam = (q[k] for k in ("L", "S", "I", "B", "C", "lam"))
    s = nodes[0]
    K = alpha_t / alpha_s * np.exp(L[s] - L[t])
    on_g = [alpha_t * np.exp(-L[t] - S[s]) * (I[t] - I[s])] + [0.0] * (len(nodes) - 1)
    if len(nodes) > 1:
        w = derivative_weights(lam[nodes], pseudo)
        seg = slice(s, t + 1)
        for m in range(1, len(nodes)):
            power = ((lam[seg] - lam[s]) ** m / math.factorial(m)).reshape(-1, *([1] * (L.ndim - 1)))
            E = alpha_t * np.exp(L[s] - L[t]) * _cumtrapz(np.exp(L[seg] + S[seg] - L[s] - S[s]) * power, lam[seg])[-1]
            for j in range(len(nodes)):
                on_g[j] = on_g[j] + E * w[m - 1, j]
    c = -alpha_t * np.exp(-L[t]) * (C[t] - C[s] - B[s] * (I[t] - I[s]))
    W = []
    for j, node in enumerate(nodes):  # g_j = e^{S_s - S_j} f_j - e^{S_s} (B_j - B_s)
        W.append(-on_g[j] * np.exp(S[s] - S[node]))
        c = c + on_g[j] * np.exp(S[s]) * (B[node] - B[s])
    return K, W, c


_PLANS: dict = {}  # one run at a time: the newest plan only
STATS = ("l", "s", "b", "lambdas")


def plan(noise, ts, stats: dict, like: torch.Tensor, order, p_pseudo, c_pseudo, use_corrector, half, half_rule,
         lower_order_final):
    """Snapped model times, F_k = (1 - l_k)/alpha_k, and each step's predictor and corrector (or None), as
    tensors like ``like``; cached per run (the same stats, grid and options for every batch)."""
    # The stats are the same arrays for every batch of a run (handed over once by the calibration stage), so
    # they are keyed by identity, with weak references against a reused id: hashing their contents per batch
    # cost more than the whole solver at 256x256.
    key = (id(noise), tuple(float(t) for t in ts), tuple(id(stats[k]) for k in STATS), like.device, like.dtype,
           order, p_pseudo, c_pseudo, use_corrector, half, half_rule, str(lower_order_final))
    hit = _PLANS.get(key)
    if hit is None or any(ref() is not stats[k] for ref, k in zip(hit[0], STATS)):
        _PLANS.clear()
        hit = _PLANS[key] = ([weakref.ref(stats[k]) for k in STATS],
                             _build(noise, ts, stats, like, order, p_pseudo, c_pseudo, use_corrector, half,
                                    half_rule, lower_order_final))
    return hit[1]


def _build(noise, ts, stats, like, order, p_pseudo, c_pseudo, use_corrector, half, half_rule, lower_order_final):
    lam = np.asarray(stats["lambdas"], dtype=np.float64)
    q = integrals(*(np.asarray(stats[k], dtype=np.float64) for k in ("l", "s", "b")), lam)
    idx = snap(noise, ts, lam)
    t = [float(noise.t_of_lam(lam[i])) for i in idx]
    alpha = [float(noise.alpha(u)) for u in t]
    orders = multistep_orders(len(ts) - 1, int(order), lower_order_final)
    corrects = HALF_RULES[half_rule] if half else (lambda _: True)
    steps, pred = [], None
    for k, p in enumerate(orders):
        c_order = orders[k - 1] + int(c_pseudo) if k > 0 else 0
        # delta: step k-1's corrector minus its predictor (weights on f_k, f_{k-1}, ...; const), or None
        if use_corrector and c_order > 1 and corrects(t[k]):  # step k-1 -> k again, with f_k among the nodes
            nodes = [idx[k - 1], idx[k]] + [idx[k - j] for j in range(2, c_order)]
            _, W, c = step_coeffs(q, idx[k], alpha[k - 1], alpha[k], nodes, c_pseudo)
            on_f = [W[1], W[0], *W[2:]]  # on f_k, f_{k-1}, f_{k-2}, ... (newest first)
            _, W_prev, c_prev = pred
            on_f += [0.0] * (len(W_prev) + 1 - len(on_f))
            delta = ([w - (W_prev[j - 1] if 0 < j <= len(W_prev) else 0.0) for j, w in enumerate(on_f)], c - c_prev)
        else:
            delta = None
        pred = step_coeffs(q, idx[k + 1], alpha[k], alpha[k + 1], [idx[k - j] for j in range(p)], p_pseudo)
        steps.append(_fused(pred, delta, (1.0 - q["l"][idx[k]]) / alpha[k], like))
    return t, steps


def _fused(pred, delta, F, like):
    """Step k's predictor applied to the uncorrected x~_k with step k-1's correction folded in (the corrector
    and the predictor of a step share K, so x_k = x~_k + delta . f + delta_c): x~_{k+1} = A x~_k + sum_j B_j g_j + c
    over g_j = -f_j = x0_j - F_j x~_j. Coefficients constant over the dimensions become host floats (l = 1,
    s = 0, b = 0 makes every one of them a float) and zero ones are dropped, so each step is as few full-tensor
    passes as its statistics allow."""
    K, W, c = pred
    on_f = list(W)
    if delta is not None:
        d = list(delta[0]) + [0.0] * (len(on_f) - len(delta[0]))
        on_f = [K * dj + (on_f[j] if j < len(on_f) else 0.0) for j, dj in enumerate(d)]
        c = c + K * delta[1]
    return _folded(F, like), _folded(K, like), [_folded(-w, like) for w in on_f], _folded(c, like)


def _folded(a, like):
    """A per-dimension array as a tensor like ``like``, or as a float when it is one value everywhere."""
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0 or np.all(a == a.flat[0]):
        return float(a.flat[0]) if a.size else 0.0
    return torch.as_tensor(a, dtype=like.dtype, device=like.device)


def _prediction_gap(F, m, x, out):
    """g = x0 - F x (= -f): the model's output itself where F is 0 (l = 1)."""
    if isinstance(F, float):
        return m if F == 0.0 else torch.sub(m, x, alpha=F, out=out)
    return torch.addcmul(m, F, x, value=-1.0, out=out)


def _step(A, B, c, x, gs):
    """A x + sum_j B_j g_j + c into a new buffer (the x the model saw stays as it was)."""
    out = torch.empty_like(x)
    if isinstance(A, float):
        if isinstance(c, float):
            torch.mul(x, A, out=out)
            if c != 0.0:
                out.add_(c)
        else:
            torch.add(c, x, alpha=A, out=out)
    else:
        torch.addcmul(c if isinstance(c, torch.Tensor) else torch.full((), c, dtype=x.dtype, device=x.device), A, x,
                      out=out)
    for b, g in zip(B, gs):
        if isinstance(b, torch.Tensor):
            out.addcmul_(b, g)
        elif b != 0.0:
            out.add_(g, alpha=b)
    return out


@functools.lru_cache(maxsize=4)  # the same arrays for every batch, so the plan cache finds them
def degenerated_stats(noise, ts: tuple, points: int, shape) -> dict:
    """l = 1, s = 0, b = 0 on the EMS grid: DPM-Solver++'s parameterisation."""
    lam = ems.lambda_grid(noise, float(ts[0]), float(ts[-1]), points)
    ones = np.ones((len(lam), *shape))
    return {"l": ones, "s": 0 * ones, "b": 0 * ones, "lambdas": lam}


def calibration(ts, noise, dtype, degenerated=False, ems_points=121, ems_samples=64, ems_probes=1, ems_seed=0,
                ems_batch=64, ems_data=None, half_rule="code", **_):
    """The EMS this run needs (None when degenerated); checks the options before anything loads."""
    check_choice("dpm_solver_v3 half_rule", half_rule, HALF_RULES)
    for name, v, lo in (("ems_points", ems_points, 2), ("ems_samples", ems_samples, 2), ("ems_probes", ems_probes, 1),
                        ("ems_batch", ems_batch, 1), ("ems_seed", ems_seed, 0)):
        if v < lo:
            raise NfebenchError(f"bad options for solver 'dpm_solver_v3': solver.{name} must be >= {lo}; got {v}")
    snap(noise, ts, ems.lambda_grid(noise, float(ts[0]), float(ts[-1]), ems_points))
    if degenerated:
        return None
    data = ems.check_data(ems_data)
    settings = {"estimator": ems.ESTIMATOR, "fd_step": ems.FD_STEP, "ridge": ems.RIDGE, "t_start": float(ts[0]),
                "t_end": float(ts[-1]), "points": int(ems_points), "samples": int(ems_samples),
                "probes": int(ems_probes), "seed": int(ems_seed), "data": data,
                "dtype": str(dtype).replace("torch.", "")}

    def compute(model, device):
        lam = ems.lambda_grid(noise, float(ts[0]), float(ts[-1]), ems_points)
        return ems.estimate(model, lam, int(ems_samples), int(ems_probes), int(ems_seed), data, device, dtype,
                            int(ems_batch))

    return Need("ems", settings, compute)


def _describe(steps, order=3, lower_order_final="always", use_corrector=True, degenerated=False, **_):
    return {**describe_multistep(steps, order, lower_order_final), "corrector": bool(use_corrector),
            "degenerated": bool(degenerated)}


@register_solver("dpm_solver_v3", describe=_describe, calibration=calibration)
def sample_dpm_solver_v3(model, x, ts, noise, rng=None, order: int = 3, p_pseudo: bool = False,
                         use_corrector: bool = True, c_pseudo: bool = True, lower_order_final="always",
                         half: bool = False, half_rule="code", degenerated: bool = False, ems_points: int = 121,
                         ems_samples: int = 64, ems_probes: int = 1, ems_seed: int = 0, ems_batch: int = 64,
                         ems_data=None, calibration=None):
    if degenerated:
        calibration = degenerated_stats(noise, tuple(float(t) for t in ts), ems_points, tuple(x.shape[1:]))
    elif calibration is None:
        raise NfebenchError("dpm_solver_v3 needs its EMS (calibration=); run it through launch.py, or "
                            "set degenerated=true")
    t, steps = plan(noise, ts, calibration, x, order, p_pseudo, c_pseudo, use_corrector, half,
                    check_choice("dpm_solver_v3 half_rule", half_rule, HALF_RULES), lower_order_final)
    gs, ours = deque(maxlen=4), deque(maxlen=4)  # g = -f at past evaluations, newest first; which are our buffers
    for k, (F, A, B, c) in enumerate(steps):
        m = model(x, t[k])
        spare = gs[-1] if len(gs) == gs.maxlen and ours[-1] else None  # the g about to drop out, when ours
        g = _prediction_gap(F, m, x, spare)
        gs.appendleft(g)
        ours.appendleft(g is not m)
        x = _step(A, B, c, x, gs)
    return x
