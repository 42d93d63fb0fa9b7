"""Time-Shift Sampler (Li et al. 2024, "Alleviating Exposure Bias in Diffusion Models through
Sampling with Shifted Time Steps"), wrapping DDIM or iPNDM.

Before each step after the first, x sits at the nominal time t_i but, through exposure bias, may
look like a sample from a nearby noise level. For each sample, its variance over all elements is
compared with the variance a sample at candidate time c would have, alpha_c^2 * data_var + sigma_c^2
(data_var = 0 compares with the noise variance alone, as the paper's rule states), over a window
of 2*window+1 candidates around t_i spanning +-width*(local step); the best match c replaces t_i
as the time at which the model is evaluated and from which the base solver steps to t_{i+1}.
Shifting stops once t_i < cutoff.

The base update is the base solver's own rule: DDIM's deterministic step (``grid.ddim_coeffs``);
iPNDM's Adams-Bashforth combination (``adams``) in EDM sigma.

Batching and NFE: the choice is per sample (so samples never depend on the batch), but the model
takes one time per call. The sampler therefore evaluates the whole batch at every candidate time
and keeps, per sample, the result for its chosen candidate (a gather by index): no host sync, identical
work for every batch, and the counter sees what is really spent, 1 + (steps - 1) * (2*window + 1)
calls (fewer when cutoff > 0 stops the shifting early; ``cost`` is then an upper bound). The
paper counts one evaluation per step (NFE per sample = steps, what a batch of one with
a per-sample-time model would spend); the record states both. Evaluating only the sub-batch that
chose each time would save compute but needs a host sync per step to learn which candidates occur
and makes the call count data-dependent, which the harness refuses. The chosen times are
data-dependent and per sample, so they are not recorded (``describe`` only sees the step count);
the candidate window is.
"""
from __future__ import annotations

import numpy as np
import torch

from common.errors import NfebenchError
from common.registry import check_choice
from ..registry import register_solver
from .adams import History, ab_weights
from .grid import ddim_coeffs, grid_coeffs, on_device, per_run
from .multistep import combine


def candidate_times(g, i, window, width, t_end):
    """Host-side candidate times around t_i, kept strictly inside (t_{i+1}, t_{i-1})."""
    h = min(g.t[i - 1] - g.t[i], g.t[i] - g.t[i + 1])
    c = g.t[i] + width * h * (np.linspace(-1.0, 1.0, 2 * window + 1) if window > 0 else np.zeros(1))
    return [float(v) for v in np.clip(c, max(g.t[i + 1], t_end) + 1e-12 * h, g.t[i - 1] - 1e-12 * h)]


def choose(x, expected):
    """Per-sample index of the candidate whose marginal variance (``expected``, on device) best matches var(x)."""
    flat = x.flatten(1)
    # the unbiased variance in two passes (mean, then centred squares): torch's var over a dim costs 20x more on CPU
    v = (flat - flat.mean(dim=1, keepdim=True)).square_().sum(dim=1) / (flat.shape[1] - 1)
    return (v[:, None] - expected[None, :]).abs().argmin(dim=1)


def _ddim_coeffs(noise, c, t_next, k):
    a, s, a1, s1 = (float(v) for v in (noise.alpha(c), noise.sigma(c), noise.alpha(t_next), noise.sigma(t_next)))
    return (c, *ddim_coeffs(a, s, a1, s1))


def _ddim_step(y, e, model, x, cand, history):
    t, c_x, c_0 = cand
    x0 = model(x, t)
    torch.mul(x, c_x, out=y).add_(x0, alpha=c_0)


def _ddim_chosen(out, model, x, cands, idx, weights):
    """DDIM from each sample's chosen candidate, x' = c_x x + c_0 x0: linear in x0, so each candidate's x0 is
    added with a per-sample weight that is c_0 where the sample chose it and 0 elsewhere (``weights``: (c_x, c_0)
    per candidate). No buffer of every candidate's step, two passes per candidate; torch.where would choose
    without the zero products but costs ~7 passes on CPU. (A candidate's x0 that is not finite where it is not
    chosen would turn 0 * x0 into NaN; the candidates are within a step of each other on the same x.)"""
    shape = (-1,) + (1,) * (x.dim() - 1)
    torch.mul(x, weights[0, idx].view(shape), out=out)
    for k, (t, _, _) in enumerate(cands):
        out.addcmul_(torch.where(idx == k, weights[1, k], 0.0).view(shape), model(x, t))
    return out


def _ipndm_coeffs(noise, c, t_next, k):
    """k: the multistep order this step can use."""
    s, s1 = float(noise.edm_sigma(c)), float(noise.edm_sigma(t_next))
    return c, float(noise.alpha(c)), s, ab_weights(k, s1 - s), float(noise.alpha(t_next))


def _ipndm_step(y, e, model, x, cand, history):
    t, a, s, weights, a_next = cand
    x0 = model(x, t)
    x_e = torch.div(x, a, out=y)
    torch.sub(x_e, x0, out=e).div_(s)  # the newest eps in EDM sigma
    combine(1.0, x_e, weights, [e, *history.items], out=x_e).mul_(a_next)


# base -> (host-side coefficients of a step from a candidate time, the step into a buffer, multistep?)
BASES = {"ddim": (_ddim_coeffs, _ddim_step, False), "ipndm": (_ipndm_coeffs, _ipndm_step, True)}


def _candidates_count(window):
    return 2 * int(window) + 1


def _cost(steps, window=2, **_):
    return 1 + (steps - 1) * _candidates_count(window)


def _steps(nfe, window=2, **_):
    return 0 if nfe < 1 else 1 + (nfe - 1) // _candidates_count(window)


def _describe(steps, base="ddim", window=2, width=0.5, cutoff=0.0, data_var=0.0, order=4, **_):
    return {"nfe_paper_convention": steps, "candidates_per_step": _candidates_count(window),
            "chosen_times": "per sample and data-dependent; not recorded"}


@per_run
def _plan(noise, ts, base, window, width, cutoff, data_var, order):
    """Per step: the step coefficients from each candidate time, and the candidates' marginal variances."""
    g = grid_coeffs(noise, ts)
    t_end, coeffs, out = float(ts[-1]), BASES[base][0], []
    for i in range(len(ts) - 1):
        cands = candidate_times(g, i, window, width, t_end) if i > 0 and g.t[i] >= cutoff else [g.t[i]]
        out.append(([coeffs(noise, c, g.t[i + 1], min(order, i + 1)) for c in cands],
                    [float(noise.alpha(c)) ** 2 * data_var + float(noise.sigma(c)) ** 2 for c in cands]))
    return out


def _device_tables(plan, ddim: bool, like):
    """Per shifted step, the candidates' marginal variances and (c_x, c_0) of each candidate's DDIM step (for
    _ddim_chosen), as tensors like ``like``: on the device before the loop (a copy inside it would sync)."""
    shifted = [(cands, v) for cands, v in plan if len(cands) > 1]
    variances = torch.as_tensor([v for _, v in shifted] or [[0.0]], dtype=like.dtype, device=like.device)
    weights = torch.as_tensor([[[c[1] for c in cands], [c[2] for c in cands]] for cands, _ in shifted] or [[[0.0]]],
                              dtype=like.dtype, device=like.device) if ddim else None
    return variances, weights


@register_solver("time_shift", steps=_steps, cost=_cost, describe=_describe)
def sample_time_shift(model, x, ts, noise, rng=None, base: str = "ddim", window: int = 2, width: float = 0.5,
                      cutoff: float = 0.0, data_var: float = 0.0, order: int = 4):
    check_choice("time_shift base", base, BASES)
    if not 0 <= width < 1 or int(window) < 0:
        raise NfebenchError(f"time_shift needs window >= 0 and 0 <= width < 1; got {window}, {width}")
    _, step, multistep = BASES[base]
    order = int(order)
    plan = _plan(noise, ts, base, int(window), float(width), float(cutoff), float(data_var), order)
    variances, weights = on_device(plan, lambda: _device_tables(plan, base == "ddim", x), x)
    variances, weights = iter(variances), (iter(weights) if weights is not None else None)
    history = History(order)  # per-sample multistep state (ipndm), full batch, newest first
    ys = es = rows = None  # every candidate's step, then the chosen one per sample (gathered by row)
    for cands, _ in plan:
        out = torch.empty_like(x)  # a new buffer per step: no x the model saw is written (it may keep it)
        e_out = history.buffer(x) if multistep else None
        if len(cands) == 1:
            step(out, e_out, model, x, cands[0], history)
        else:
            idx = choose(x, next(variances))
            if base == "ddim":
                x = _ddim_chosen(out, model, x, cands, idx, next(weights))
                continue
            if ys is None:
                ys = x.new_empty((len(cands), *x.shape))
                es = torch.empty_like(ys) if multistep else None
                rows = torch.arange(len(x), device=x.device)
            for k, cand in enumerate(cands):
                step(ys[k], es[k] if multistep else None, model, x, cand, history)
            pick = idx * len(x) + rows  # row of sample i's chosen candidate among all candidates' rows
            torch.index_select(ys.flatten(0, 1), 0, pick, out=out)
            if multistep:
                torch.index_select(es.flatten(0, 1), 0, pick, out=e_out)
        if multistep:
            history.push(e_out)
        x = out
    return x
