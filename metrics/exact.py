"""Exact metrics for analytic models (metrics=exact).

fd_pixel: Fréchet distance in pixel space between the samples and the model's exact marginal
at the solver's end time (its mean and covariance come from the model, not from another
finite sample). It is not FID: no Inception features are involved.
ode_rmse: root-mean-square difference, per pixel, from the probability-flow ODE solution
started at the same noise (closed form for gaussian, a tight adaptive solve for digits).
"""
from __future__ import annotations

import math

import numpy as np


from sampling.errors import NfebenchError

from .frechet import frechet_distance
from .moments import RunningMoments


class ExactMetrics:

    def __init__(self, model, t_start: float, t_end: float, ode_rmse: bool = True):
        if not hasattr(model, "marginal_moments"):
            raise NfebenchError(f"metrics=exact needs an analytic model; {type(model).__name__} has no exact moments")
        self.model, self.t_start, self.t_end, self.with_ode = model, t_start, t_end, ode_rmse
        self.moments = RunningMoments(math.prod(model.shape))
        self.sq_err, self.count = 0.0, 0

    def update(self, samples, x_start, indices=None):
        self.moments.update(samples.detach().cpu().double().reshape(len(samples), -1).numpy())
        if self.with_ode:
            ref = self.model.ode_solution(x_start, self.t_start, self.t_end)
            self.sq_err += float(((samples - ref).double() ** 2).sum())
            self.count += samples.numel()

    def state(self) -> dict:
        """Everything result() needs, as numpy arrays: shards' states merge exactly."""
        st = self.moments.state()
        return {"n": np.asarray(st["n"]), "mean": st["mean"], "m2": st["m2"],
                "sq_err": np.asarray(self.sq_err), "count": np.asarray(self.count)}

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
                "num_samples": self.moments.n}
