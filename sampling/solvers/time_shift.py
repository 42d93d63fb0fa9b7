"""Time-Shift Sampler (Li et al. 2024, "Alleviating Exposure Bias in Diffusion Models through
Sampling with Shifted Time Steps"), wrapping DDIM or iPNDM.

Before each step after the first, x sits at the nominal time t_i but, through exposure bias, may
look like a sample from a nearby noise level. For each sample, its variance over all elements is
compared with the variance a sample at candidate time c would have, alpha_c^2 * data_var + sigma_c^2
(data_var = 0 compares with the noise variance alone, as the paper's rule states), over a window
of 2*window+1 candidates around t_i spanning +-width*(local step); the best match c replaces t_i
as the time at which the model is evaluated and from which the base solver steps to t_{i+1}.
Shifting stops once t_i < cutoff.

The base update is the base solver's own rule: DDIM steps call ``sample_ddim`` on a two-point
grid; iPNDM steps use its Adams-Bashforth combination (``pndm.combine``) in EDM sigma.

Batching and NFE: the choice is per sample (so samples never depend on the batch), but the model
takes one time per call. The sampler therefore evaluates the whole batch at every candidate time
and keeps, per sample, the result for its chosen candidate (torch.where): no host sync, identical
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
from ..registry import register_solver
from .ddim import sample_ddim
from .grid import grid_coeffs
from .pndm import combine


def candidate_times(g, i, window, width, t_end):
    """Host-side candidate times around t_i, kept strictly inside (t_{i+1}, t_{i-1})."""
    h = min(g.t[i - 1] - g.t[i], g.t[i] - g.t[i + 1])
    c = g.t[i] + width * h * (np.linspace(-1.0, 1.0, 2 * window + 1) if window > 0 else np.zeros(1))
    return [float(v) for v in np.clip(c, max(g.t[i + 1], t_end) + 1e-12 * h, g.t[i - 1] - 1e-12 * h)]


def choose(x, noise, cands, data_var):
    """Per-sample index of the candidate whose marginal variance best matches var(x) (on device)."""
    expected = torch.as_tensor([float(noise.alpha(c)) ** 2 * data_var + float(noise.sigma(c)) ** 2 for c in cands],
                               dtype=x.dtype, device=x.device)
    v = x.flatten(1).var(dim=1, unbiased=True)
    return (v[:, None] - expected[None, :]).abs().argmin(dim=1)


def _ddim_step(model, x, t, t_next, noise, history, order):
    return sample_ddim(model, x, [t, t_next], noise), history


def _ipndm_step(model, x, t, t_next, noise, history, order):
    a, a1 = float(noise.alpha(t)), float(noise.alpha(t_next))
    s, s1 = float(noise.edm_sigma(t)), float(noise.edm_sigma(t_next))
    x_e = x / a
    history = [(x_e - model(x, t)) / s] + history[: order - 1]
    return a1 * (x_e + (s1 - s) * combine(history, len(history))), history


# base -> (one step from a possibly shifted time, whether it carries multistep history)
BASES = {"ddim": (_ddim_step, False), "ipndm": (_ipndm_step, True)}


def _candidates_count(window):
    return 2 * int(window) + 1


def _cost(steps, window=2, **_):
    return 1 + (steps - 1) * _candidates_count(window)


def _steps(nfe, window=2, **_):
    return 0 if nfe < 1 else 1 + (nfe - 1) // _candidates_count(window)


def _describe(steps, base="ddim", window=2, width=0.5, cutoff=0.0, data_var=0.0, order=4, **_):
    return {"nfe_paper_convention": steps, "candidates_per_step": _candidates_count(window),
            "chosen_times": "per sample and data-dependent; not recorded"}


@register_solver("time_shift", steps=_steps, cost=_cost, describe=_describe)
def sample_time_shift(model, x, ts, noise, rng=None, base: str = "ddim", window: int = 2, width: float = 0.5,
                      cutoff: float = 0.0, data_var: float = 0.0, order: int = 4):
    if base not in BASES:
        raise NfebenchError(f"time_shift base must be one of {', '.join(BASES)}; got '{base}'")
    if not 0 <= width < 1 or int(window) < 0:
        raise NfebenchError(f"time_shift needs window >= 0 and 0 <= width < 1; got {window}, {width}")
    (step_fn, multistep), order = BASES[base], int(order)
    g = grid_coeffs(noise, ts)
    steps = len(ts) - 1
    t_end = float(ts[-1])
    cands = [candidate_times(g, i, int(window), float(width), t_end) if i > 0 and g.t[i] >= cutoff else [g.t[i]]
             for i in range(steps)]
    history = []  # per-sample multistep state (ipndm), full batch, newest first
    for i in range(steps):
        idx = choose(x, noise, cands[i], float(data_var)) if len(cands[i]) > 1 else None
        if idx is None:
            x, history = step_fn(model, x, cands[i][0], g.t[i + 1], noise, history, order)
            continue
        out, newest = x, None
        for k, c in enumerate(cands[i]):
            y, hist_k = step_fn(model, x, c, g.t[i + 1], noise, history, order)
            pick = (idx == k).reshape(-1, *([1] * (x.dim() - 1)))
            out = torch.where(pick, y, out)
            if multistep:
                newest = hist_k[0] if newest is None else torch.where(pick, hist_k[0], newest)
        x = out
        if multistep:
            history = [newest] + history[: order - 1]
    return x
