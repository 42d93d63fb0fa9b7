"""The NFE counter every model call goes through.

NFE here is what the published tables mean: one evaluation of the network on the whole
batch at one noise level. A guided model's doubled batch (conditional + unconditional) is
still one NFE; `network_evals` counts the network batch evaluations behind them. The counter
enforces the budget (an overrun raises instead of silently spending more), binds the batch's
per-sample conditioning (class labels) so that solvers keep calling `model(x, t)`, times the
model, and keeps per-call finiteness flags as device tensors so that a NaN can be traced to
its step without syncing inside the solver loop.
"""
from __future__ import annotations

import time

import torch

from common.errors import NfebenchError


class BudgetExceeded(NfebenchError):
    pass


class CountedDenoiser:
    def __init__(self, model, budget: int | None, cond=None):
        self.model = model
        self.budget = budget
        self.cond = cond
        self.count = 0
        self.network_evals = 0
        self.seconds = 0.0
        self.times: list[float] = []
        self._finite: list[torch.Tensor] = []

    def __getattr__(self, name):
        # Solvers may read model attributes (noise schedule, shape); calls must come through here.
        return getattr(self.model, name)

    def __call__(self, x, t: float, cond=None):
        if self.budget is not None and self.count >= self.budget:
            raise BudgetExceeded(f"solver asked for model evaluation {self.count + 1} with a budget of {self.budget} NFE")
        self.count += 1
        self.network_evals += getattr(self.model, "evals_per_call", 1)
        self.times.append(float(t))
        start = time.perf_counter()
        out = self.model(x, t, self.cond if cond is None else cond)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)  # only so that model time is real time
        self.seconds += time.perf_counter() - start
        self._finite.append(torch.isfinite(x).all() & torch.isfinite(out).all())
        return out

    def first_nonfinite_call(self) -> int | None:
        """1-based index of the first call whose input or output was NaN/Inf (host sync: call after sampling)."""
        if not self._finite:
            return None
        flags = torch.stack(self._finite).cpu().tolist()
        return next((i + 1 for i, ok in enumerate(flags) if not ok), None)
