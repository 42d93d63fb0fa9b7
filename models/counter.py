"""The NFE counter every model call goes through.

NFE here is what the published tables mean: one evaluation of the network on the whole
batch at one noise level. A guided model's doubled batch (conditional + unconditional) is
still one NFE; `network_evals` counts the network batch evaluations behind them. The counter
enforces the budget (an overrun raises instead of silently spending more), binds the batch's
per-sample conditioning (class labels) so that solvers keep calling `model(x, t)` and times the
model. It does no finiteness work per call: the run checks each batch's final samples once, and a
non-finite batch is replayed (samples depend only on (seed, i)) with ``trace=True``, which keeps
one reduction per call to name the step where NaN/Inf first appeared.
"""
from __future__ import annotations

import time

import torch

from common.errors import NfebenchError


class BudgetExceeded(NfebenchError):
    pass


class CountedDenoiser:
    def __init__(self, model, budget: int | None, cond=None, trace: bool = False):
        self.model = model
        self.budget = budget
        self.cond = cond
        self.count = 0
        self.network_evals = 0
        self._rows = 0  # rows evaluated by on_rows since its count last rose
        self.times: list[float] = []
        # trace: NaN and Inf propagate through a sum, so one device scalar per call (no host sync)
        # finds the first bad call after the batch. A finite float32 tensor whose sum overflows has
        # entries near 1e38 / numel: a run already diverging there.
        self.trace = trace
        self._sums: list[torch.Tensor] = []
        self._host_s = 0.0
        self._events: list = []  # CUDA (start, end) pairs: read once, after the batch

    def __getattr__(self, name):
        # Solvers may read model attributes (noise schedule, shape); calls must come through here.
        return getattr(self.model, name)

    def __call__(self, x, t: float, cond=None):
        self._charge(1)
        return self._evaluate(x, t, self.cond if cond is None else cond)

    def on_rows(self, x, t: float, rows: torch.Tensor, batch: int):
        """The model on some rows of the batch (``rows`` indexes the batch of ``batch`` samples), for solvers
        whose samples sit at their own noise levels and so are evaluated level by level. NFE stays per sample:
        the count rises by one each time ``batch`` rows have been evaluated, so a round that evaluates every
        sample once, in any number of groups, is one NFE; ``network_evals`` counts every group's call."""
        whole, self._rows = divmod(self._rows + len(rows), batch)
        self._charge(whole)
        return self._evaluate(x, t, None if self.cond is None else self.cond[rows])

    def _charge(self, n: int):
        if self.budget is not None and self.count + n > self.budget:
            raise BudgetExceeded(f"solver asked for model evaluation {self.count + 1} with a budget of {self.budget} NFE")
        self.count += n

    def _evaluate(self, x, t: float, cond):
        self.network_evals += getattr(self.model, "evals_per_call", 1)
        self.times.append(float(t))
        if x.is_cuda:
            # events time the kernels on the stream without making the host wait for them
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.model(x, t, cond)
            end.record()
            self._events.append((start, end))
        else:
            start = time.perf_counter()
            out = self.model(x, t, cond)
            self._host_s += time.perf_counter() - start
        if self.trace:
            self._sums.append(x.sum() + out.sum())
        return out

    @property
    def seconds(self) -> float:
        """Time inside model calls (on CUDA this waits for the last call to finish: read it after sampling)."""
        if self._events:
            self._events[-1][1].synchronize()
        return self._host_s + sum(s.elapsed_time(e) for s, e in self._events) / 1000

    def first_nonfinite_call(self) -> int | None:
        """1-based index of the first call whose input or output was NaN/Inf (host sync: call after sampling)."""
        if not self.trace:
            raise RuntimeError("first_nonfinite_call needs a counter made with trace=True")
        if not self._sums:
            return None
        flags = torch.isfinite(torch.stack(self._sums)).cpu().tolist()
        return next((i + 1 for i, ok in enumerate(flags) if not ok), None)
