"""Host-side per-grid-point quantities, computed once per run before a solver loop, and the small pieces
of the steps that several solvers share."""
from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class GridCoeffs:
    t: list        # model times
    alpha: list
    sigma: list
    lam: list      # log(alpha / sigma)
    s: list        # EDM sigma = sigma / alpha


def grid_coeffs(noise, ts) -> GridCoeffs:
    ts = np.asarray(ts, dtype=np.float64)
    as_list = lambda v: [float(u) for u in np.broadcast_to(v, ts.shape)]  # noqa: E731
    return GridCoeffs(as_list(ts), as_list(noise.alpha(ts)), as_list(noise.sigma(ts)), as_list(noise.lam(ts)),
                      as_list(noise.edm_sigma(ts)))


def per_run(plan):
    """Caches ``plan(noise, ts, *options)``: a run calls its solver once per batch with the same schedule,
    grid and options, so the host-side coefficients are built once. The noise schedule is keyed by
    identity; options must be hashable; the result is shared, so it must never be modified."""
    cached = functools.lru_cache(maxsize=32)(lambda noise, ts, *opts: plan(noise, np.array(ts), *opts))

    @functools.wraps(plan)
    def wrap(noise, ts, *opts):
        return cached(noise, tuple(float(t) for t in ts), *opts)

    return wrap


_ON_DEVICE: "OrderedDict[tuple, tuple]" = OrderedDict()


def on_device(owner, build, like: torch.Tensor):
    """build(): tensors made from host numbers (lists, arrays) on ``like``'s device and dtype, built once per
    (owner, device, dtype): ``owner`` is a per-run object (a plan cached by per_run, calibration statistics), so
    a run's batches share one copy. A copy from host data to a GPU waits for the device; once per run, not
    per batch. The result is shared: never modify it."""
    key = (id(owner), like.device, like.dtype)
    hit = _ON_DEVICE.get(key)
    if hit is None or hit[0] is not owner:  # the owner is held, so its id cannot be reused while cached
        hit = _ON_DEVICE[key] = (owner, build())
        while len(_ON_DEVICE) > 32:
            _ON_DEVICE.popitem(last=False)
    return hit[1]


def ddim_coeffs(a, s, a_next, keep):
    """(c_x, c_0) of DDIM's step x' = a' x0 + keep * eps with eps = (x - a x0) / s, i.e. x' = c_x x + c_0 x0.

    keep = sigma' is the deterministic step (the exact step when x0 is constant)."""
    return keep / s, a_next - keep * a / s


def scaled(x, a: float, out):
    """alpha * x written into ``out``: the model's input when x is in EDM coordinates (x / alpha); x itself
    where alpha = 1 (EDM, VE). The model reads it before the solver next writes x or ``out``."""
    return x if a == 1.0 else torch.mul(x, a, out=out)


def sigma_eps(model, x, t: float, a: float, s: float, out=None):
    """sigma(t) eps = x - a D(x, t) (a = alpha(t), s = sigma(t)), into ``out`` if given: one model call. The run's
    NFE counter (models/counter.py) hands an eps network's own output times s back in one pass; it is looked up
    on the class, so a wrapper that forwards attributes (thresholding, dlg's row groups) takes the x0 path."""
    fast = getattr(type(model), "sigma_eps", None)
    if fast is not None:
        return fast(model, x, t, a, s, out)
    return torch.sub(x, model(x, t), alpha=a, out=out)
