"""One denoiser interface for every model: (x_t, t, cond) -> prediction of x_0.

Models implement ``predict`` in whatever parameterisation they were trained with; the
adapters below turn eps-, x0- and v-predictions into x_0 for the solvers. ``t`` is the
continuous time of the model's noise schedule (a Python float, shared by the batch), so a
model call never needs a host sync.
"""
from __future__ import annotations

import math

import torch

from common.registry import check_choice


def _x0_from_eps(out, x, a, s):
    # (x - s out) / a in two passes over one new buffer (a multiply: a division costs twice as much)
    return torch.sub(x, out, alpha=s).mul_(1.0 / a)


def _x0_from_v(out, x, a, s):
    # v = a*eps - s*x0 and x = a*x0 + s*eps give x0 = (a*x - s*v) / (a^2 + s^2) for any schedule.
    return (a * x - s * out) / (a * a + s * s)


def _eps_from_x0(x0, x, a, s):
    return (x - a * x0) / s


def _v_from_x0(x0, x, a, s):
    return a * _eps_from_x0(x0, x, a, s) - s * x0


TO_X0 = {"x0": lambda out, x, a, s: out, "eps": _x0_from_eps, "v": _x0_from_v}
FROM_X0 = {"x0": lambda x0, x, a, s: x0, "eps": _eps_from_x0, "v": _v_from_x0}


class Denoiser:
    """Base class. Subclasses set ``noise`` (a NoiseSchedule), ``shape`` and ``predict``."""

    prediction = "x0"
    noise = None
    shape: tuple = ()

    def predict(self, x: torch.Tensor, t: float, cond=None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, t: float, cond=None) -> torch.Tensor:
        if self.prediction == "x0":  # nothing to convert: skip the host-side schedule look-ups
            return self.predict(x, t, cond)
        a, s = self._alpha_sigma(t)
        return TO_X0[self.prediction](self.predict(x, t, cond), x, a, s)

    def _alpha_sigma(self, t):
        """alpha(t), sigma(t) as floats, remembered per time: a run asks for the same few times every batch,
        and a schedule look-up costs as much as a small tensor pass."""
        if not isinstance(t, float):
            return float(self.noise.alpha(t)), float(self.noise.sigma(t))
        cache = self.__dict__.get("_alpha_sigma_cache")
        if cache is None or cache[0] is not self.noise or len(cache[1]) > 4096:
            cache = self.__dict__["_alpha_sigma_cache"] = (self.noise, {})
        found = cache[1].get(t)
        if found is None:
            found = cache[1][t] = (float(self.noise.alpha(t)), float(self.noise.sigma(t)))
        return found

    def describe(self) -> dict:
        return {"class": type(self).__name__, "prediction": self.prediction, "shape": list(self.shape),
                "noise_schedule": self.noise.describe()}


def check_prediction(name: str) -> str:
    return check_choice("prediction type", name, TO_X0)


def dim(shape) -> int:
    return math.prod(shape)
