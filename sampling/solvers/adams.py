"""Adams-Bashforth combinations of past noise estimates (PLMS, iPNDM, the time-shift sampler's iPNDM base).

With uniform steps, the order-k rule extrapolates the newest k estimates e_k, e_{k-1}, ... by the
weights below, already multiplied by the step's own factor: Python floats that the solvers pass to
multistep.combine.
"""
from __future__ import annotations

import torch

# weights on (e_k, e_{k-1}, ...), orders 1-4
AB = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def ab_weights(order: int, scale: float = 1.0) -> tuple:
    """``scale`` times the order-``order`` weights."""
    return tuple(scale * w for w in AB[order - 1])


class History:
    """The newest ``size`` estimates, newest first. A new estimate is written into the buffer of the one
    that drops out, so a run of steps allocates ``size`` tensors in all."""

    def __init__(self, size: int):
        self.size, self.items = size, []

    def buffer(self, like):
        """Where to write the next estimate (call before ``push``)."""
        return self.items.pop() if len(self.items) == self.size else torch.empty_like(like)

    def push(self, e):
        self.items.insert(0, e)
        return e

    def __len__(self):
        return len(self.items)
