"""Dynamic thresholding of x0 predictions (Saharia et al. 2022, Imagen).

Per sample, s is the `ratio` quantile of |x0|, floored at 1 and capped at max_value; x0 is
clipped to [-s, s] and divided by s. It only makes sense where x0 lives in a bounded pixel
range, so latent models refuse it.
"""
from __future__ import annotations

import torch

from common.errors import NfebenchError


class Thresholded:
    def __init__(self, model, ratio: float = 0.995, max_value: float = 1.0):
        if getattr(model, "latent", False):
            raise NfebenchError("dynamic thresholding is for pixel-space models; this model samples latents")
        if not 0 < ratio <= 1 or max_value < 1:
            raise NfebenchError(f"dynamic thresholding needs 0 < ratio <= 1 and max_value >= 1; got {ratio}, {max_value}")
        self.model, self.ratio, self.max_value = model, float(ratio), float(max_value)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x, t, cond=None):
        x0 = self.model(x, t, cond)
        flat = x0.reshape(len(x0), -1).abs()
        s = torch.quantile(flat, self.ratio, dim=1).clamp(1.0, self.max_value)
        s = s.reshape(-1, *([1] * (x0.dim() - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s
