"""metrics=digits_fd: pixel-space Fréchet distance to the 1797 scikit-learn digits.

A sample-quality number for any model of 8x8 digits in [-1, 1] (the trained `digits_unet`, or the
analytic `digits` mixture), computed the same way for every solver: float64 running moments of the
samples against the mean and unbiased covariance of the 1797 digits scaled as the models see them
(pixel / 8 - 1). It is not FID (no Inception features) and it has a finite-sample floor (about
0.4 at 500 samples, see the README's digits_unet note).
"""
from __future__ import annotations

import math

import numpy as np

from common.errors import NfebenchError

from .frechet import frechet_distance
from .streaming import RunningMoments

DIGITS_SHAPE = (1, 8, 8)


def digits_moments():
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float64) / 8.0 - 1.0
    return x.mean(0), np.cov(x, rowvar=False), len(x)


class DigitsFDMetrics:
    def __init__(self, model, t_start: float, t_end: float):
        if tuple(model.shape) != DIGITS_SHAPE or hasattr(model, "decode"):
            raise NfebenchError(f"metrics=digits_fd needs 1x8x8 digit samples; the model samples {list(model.shape)}")
        self.moments = RunningMoments(math.prod(DIGITS_SHAPE))

    def update(self, samples, x_start, indices=None):
        self.moments.update(samples.detach().cpu().double().reshape(len(samples), -1).numpy())

    def state(self) -> dict:
        return self.moments.state()

    def merge_state(self, state: dict) -> None:
        self.moments.merge(RunningMoments.from_state(state))

    def result(self) -> dict:
        mean, cov, _ = digits_moments()
        return {"fd_digits": frechet_distance(self.moments.mean, self.moments.cov(), mean, cov)}

    def protocol(self) -> dict:
        return {"suite": "digits_fd", "num_samples": self.moments.n,
                "reference": {"id": "sklearn load_digits: 1797 images, pixel/8 - 1, unbiased covariance"}}
