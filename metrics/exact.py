"""Exact metrics for analytic models (metrics=exact).

fd_pixel: Fréchet distance in pixel space between the samples and the model's exact marginal
at the solver's end time (its mean and covariance come from the model, not from another
finite sample). It is not FID: no Inception features are involved.
ode_rmse: root-mean-square difference, per pixel, from the probability-flow ODE solution
started at the same noise (closed form for gaussian, a tight adaptive solve for digits).

The adaptive solve costs far more than any solver it judges and is the same for every solver and
NFE of a sweep, so it is cached on disk (beside the FID reference statistics, under
`ode_reference/`), one file per batch keyed by the model's identity, the t range and the batch's
initial noise (which fixes seed and index range). Each file carries a checksum of its array; a
damaged file is solved again and replaced.
"""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import torch

from common.errors import NfebenchError
from common.checked_npz import read_checked, write_checked

from .frechet import frechet_distance
from .references import cache_dir as fid_cache_dir  # the ODE references live beside the FID statistics
from .streaming import RunningMoments


class ExactMetrics:

    def __init__(self, model, t_start: float, t_end: float, ode_rmse: bool = True, ode_cache: bool = True,
                 cache_dir: str | None = None):
        if not hasattr(model, "marginal_moments"):
            raise NfebenchError(f"metrics=exact needs an analytic model; {type(model).__name__} has no exact moments")
        self.model, self.t_start, self.t_end, self.with_ode = model, t_start, t_end, ode_rmse
        self.moments = RunningMoments(math.prod(model.shape))
        self.sq_err, self.count = 0.0, 0
        # a closed-form reference is cheaper to recompute than to read
        cached = ode_rmse and ode_cache and getattr(model, "ode_reference", None) != "closed form"
        self.cache = OdeCache(model, t_start, t_end, cache_dir) if cached else None

    def update(self, samples, x_start, indices=None):
        self.moments.update(samples.detach().cpu().double().reshape(len(samples), -1).numpy())
        if self.with_ode:
            ref = self.cache.solution(x_start) if self.cache else self.model.ode_solution(x_start, self.t_start, self.t_end)
            self.sq_err += float(((samples - ref).double() ** 2).sum())
            self.count += samples.numel()

    def state(self) -> dict:
        """Everything result() needs, as numpy arrays: shards' states merge exactly."""
        return {**self.moments.state(), "sq_err": np.asarray(self.sq_err), "count": np.asarray(self.count)}

    def merge_state(self, state: dict) -> None:
        self.moments.merge(RunningMoments.from_state(state))
        self.sq_err += float(state["sq_err"])
        self.count += int(state["count"])

    def result(self) -> dict:
        mean, cov = self.model.marginal_moments(self.t_end)
        out = {"fd_pixel": frechet_distance(self.moments.mean, self.moments.cov(), mean, cov)}
        if self.with_ode:
            out["ode_rmse"] = math.sqrt(self.sq_err / self.count)
        return out

    def protocol(self) -> dict:
        return {"suite": "exact", "fd_pixel_reference": f"exact marginal of the model at t_end={self.t_end}",
                "ode_rmse_reference": self.model.ode_reference if self.with_ode else None,
                "ode_reference_cache": self.cache.protocol() if self.cache else None,
                "num_samples": self.moments.n}


def model_identity(model) -> str:
    """sha256 of what an analytic model's ODE solution depends on: class, noise schedule, every
    scalar and array attribute (for digits: std, tolerance, the 1797 centres)."""
    h = hashlib.sha256()
    desc = {k: v for k, v in model.describe().items() if k != "prediction"}  # the solution is the same for any
    h.update(json.dumps(desc, sort_keys=True, default=str).encode())
    for k, v in sorted(vars(model).items()):
        if k == "prediction" or k.startswith("_"):
            continue
        if isinstance(v, np.ndarray):
            h.update(k.encode() + np.ascontiguousarray(v, np.float64).tobytes())
        elif isinstance(v, (int, float, str, bool, tuple)):
            h.update(f"{k}={v!r}".encode())
    return h.hexdigest()


class OdeCache:
    """The reference ODE solution of each batch, computed once per (model, t range, initial noise)."""

    def __init__(self, model, t_start: float, t_end: float, cache_dir: str | None = None):
        self.model, self.t_start, self.t_end = model, float(t_start), float(t_end)
        self.dir = fid_cache_dir(cache_dir) / "ode_reference"
        self.prefix = json.dumps({"model": model_identity(model), "t_start": self.t_start.hex(),
                                  "t_end": self.t_end.hex()}).encode()
        self.hits = self.built = 0

    def _path(self, x_start: torch.Tensor):
        x = x_start.detach().cpu().contiguous()
        key = hashlib.sha256(self.prefix + str(x.dtype).encode() + str(tuple(x.shape)).encode() + x.numpy().tobytes())
        return self.dir / f"{key.hexdigest()}.npz"

    def solution(self, x_start: torch.Tensor) -> torch.Tensor:
        path = self._path(x_start)
        ref = _read(path, tuple(x_start.shape))
        if ref is not None:
            self.hits += 1
            return torch.as_tensor(ref).to(device=x_start.device, dtype=x_start.dtype)
        out = self.model.ode_solution(x_start, self.t_start, self.t_end)
        arr = out.detach().cpu().double().numpy()
        write_checked(path, {"ref": arr})  # atomic: parallel runs of one sweep see no file or a whole one
        self.built += 1
        return out

    def protocol(self) -> dict:
        return {"dir": str(self.dir), "hits": self.hits, "built": self.built}


def _read(path, shape) -> np.ndarray | None:
    """None when absent or damaged: a bad file is never trusted, it is rebuilt."""
    arrays = read_checked(path, required=("ref",))
    return arrays["ref"] if arrays is not None and arrays["ref"].shape == shape else None
