"""The NFE counter every model call goes through.

NFE here is what the published tables mean: one evaluation of the network on the whole
batch at one noise level. A guided model's doubled batch (conditional + unconditional) is
still one NFE; `network_evals` counts the network batch evaluations behind them. The counter
enforces the budget (an overrun raises instead of silently spending more), binds the batch's
per-sample conditioning (class labels) so that solvers keep calling `model(x, t)` and times the
model. It does no finiteness work per call: the run checks each batch's final samples once, and a
non-finite batch is replayed (samples depend only on (seed, i)) with ``trace=True``, which keeps
one reduction per call to name the step where NaN/Inf first appeared.

Compute beside NFE: a call's network configuration is (input shape, dtype, kind), where kind is
"full" or a cheaper path the model names (DeepCache's "partial"). The first call of each configuration
a model sees runs under torch's FlopCounterMode, and its multiply-accumulates (FLOPs / 2) are kept per
model for every later counter; all other calls only bump a count and a clock, so the loop stays free of
host syncs. What FlopCounterMode counts is matmul, convolution and attention (incl. the CPU attention
kernel, registered below); elementwise work (norms, activations, the analytic models' broadcasts) is not.
"""
from __future__ import annotations

import time
import weakref

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from common.errors import NfebenchError

from .denoiser import Denoiser


class BudgetExceeded(NfebenchError):
    pass


MAC_COUNTER = "torch.utils.flop_counter (matmul, convolution, attention; elementwise ops not counted); MACs = FLOPs / 2"
_MACS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {config: MACs of one call}


def _cpu_attention(q, k, v, *args, out_shape=None, **kwargs):
    # torch counts the CUDA attention kernels but not the CPU one; same formula
    return sdpa_flop_count(q, k, v)


def count_macs(fn, *args) -> tuple:
    """(fn(*args), multiply-accumulates it spent)."""
    with FlopCounterMode(display=False, custom_mapping={
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention}) as flops:
        out = fn(*args)
    return out, flops.get_total_flops() // 2


def config_name(config: tuple) -> str:
    shape, dtype, kind = config
    return f"{kind} {'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')}"


class CountedDenoiser:
    def __init__(self, model, budget: int | None, cond=None, trace: bool = False, calls: int | None = None):
        """calls: how many calls this batch will make (the plan's cost), for models whose call schedule
        depends on it (DeepCache); each counter starts the model's per-batch state afresh."""
        self.model = model
        self.budget = budget
        self.cond = cond
        self.count = 0
        self.network_evals = 0
        self._rows = 0  # rows evaluated by on_rows since its count last rose
        self.setup_rows = 0  # rows evaluated by on_setup (not charged to this batch's NFE)
        self.setup_evals = 0
        self.times: list[float] = []
        # trace: NaN and Inf propagate through a sum, so one device scalar per call (no host sync)
        # finds the first bad call after the batch. A finite float32 tensor whose sum overflows has
        # entries near 1e38 / numel: a run already diverging there.
        self.trace = trace
        self._sums: list[torch.Tensor] = []
        self._host_s = 0.0
        self._events: list = []  # CUDA (config, start, end): read once, after the batch
        self._by: dict = {}  # config -> [calls, seconds on the host (CPU), metered here]: one lookup a call
        try:
            self.macs_by = _MACS.setdefault(model, {})
        except TypeError:  # a model that cannot be weakly referenced or hashed: counted per counter
            self.macs_by = {}
        self._kind = getattr(model, "next_call_kind", None)
        # a network that predicts eps and whose x0 is the base adapter's: sigma_eps can skip the x0 round trip
        self._native_eps = (isinstance(model, Denoiser) and model.prediction == "eps"
                            and type(model).__call__ is Denoiser.__call__)
        start = getattr(model, "start_batch", None)
        if start is not None:
            start(calls)

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

    def sigma_eps(self, x, t: float, a: float, s: float, out=None):
        """sigma(t) eps = x - alpha(t) D(x) at (x, t), for solvers that step in eps (a = alpha(t), s = sigma(t)),
        into ``out`` if given: an eps network's own output times s (one pass), not the adapter's x0 turned back
        into eps (three passes). One NFE, like a call."""
        self._charge(1)
        if self._native_eps:
            return torch.mul(self._evaluate(x, t, self.cond, native=True), s, out=out)
        return torch.sub(x, self._evaluate(x, t, self.cond), alpha=a, out=out)

    def on_setup(self, x, t: float):
        """The model on rows of run-level state that later batches share (dlg's persistent chains: burn-in and
        catch-up): not charged to this batch's NFE, which is per output sample, but tallied apart in
        ``setup_rows`` (one per evaluated row) and ``setup_evals`` (calls). Its MACs and time count in compute."""
        if self.cond is not None:
            raise NfebenchError("run-level model state (persistent chains) needs an unconditional model")
        self.setup_rows += len(x)
        return self._evaluate(x, t, None, setup=True)

    def _charge(self, n: int):
        if self.budget is not None and self.count + n > self.budget:
            raise BudgetExceeded(f"solver asked for model evaluation {self.count + 1} with a budget of {self.budget} NFE")
        self.count += n

    def _evaluate(self, x, t: float, cond, setup: bool = False, native: bool = False):
        call = self.model.predict if native else self.model
        evals = getattr(self.model, "evals_per_call", 1)
        if setup:
            self.setup_evals += evals
        else:
            self.network_evals += evals
        self.times.append(float(t))
        config = (x.shape, x.dtype, self._kind(x) if self._kind else "full")
        entry = self._by.get(config)
        if entry is None:
            entry = self._by[config] = [0, 0.0, config not in self.macs_by]
        entry[0] += 1
        args = (x, t, cond)
        if entry[2] and entry[0] == 1:  # once per model and configuration; this call is not timed per config
            start = time.perf_counter()
            out, self.macs_by[config] = count_macs(call, *args)
            self._host_s += time.perf_counter() - start
        elif x.is_cuda:
            # events time the kernels on the stream without making the host wait for them
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = call(*args)
            end.record()
            self._events.append((config, start, end))
        else:
            start = time.perf_counter()
            out = call(*args)
            elapsed = time.perf_counter() - start
            self._host_s += elapsed
            entry[1] += elapsed
        if self.trace:
            self._sums.append(x.sum() + out.sum())
        return out

    @property
    def seconds(self) -> float:
        """Time inside model calls (on CUDA this waits for the last call to finish: read it after sampling)."""
        return self._host_s + sum(self._device_by().values())

    def _device_by(self) -> dict:
        out: dict = {}
        if self._events:
            self._events[-1][2].synchronize()
        for config, s, e in self._events:
            out[config] = out.get(config, 0.0) + s.elapsed_time(e) / 1000
        return out

    @property
    def calls_by(self) -> dict:
        """config (input shape, dtype, kind) -> calls."""
        return {c: e[0] for c, e in self._by.items()}

    def seconds_by(self) -> dict:
        """config -> seconds inside its timed calls (the metered first call of a configuration is not timed)."""
        out = self._device_by()
        return {c: out.get(c, 0.0) + e[1] for c, e in self._by.items()}

    def timed_calls(self, config) -> int:
        calls, _, metered = self._by.get(config, (0, 0.0, False))
        return calls - bool(metered)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of this counter's calls."""
        return sum(n * self.macs_by[c] for c, n in self.calls_by.items())

    def first_nonfinite_call(self) -> int | None:
        """1-based index of the first call whose input or output was NaN/Inf (host sync: call after sampling)."""
        if not self.trace:
            raise RuntimeError("first_nonfinite_call needs a counter made with trace=True")
        if not self._sums:
            return None
        flags = torch.isfinite(torch.stack(self._sums)).cpu().tolist()
        return next((i + 1 for i, ok in enumerate(flags) if not ok), None)


class ComputeTally:
    """A run's compute over its batches' counters: calls, MACs and seconds per network configuration."""

    def __init__(self):
        self.calls: dict = {}
        self.timed: dict = {}
        self.seconds: dict = {}
        self.macs: dict = {}

    def add(self, counter: CountedDenoiser) -> None:
        seconds = counter.seconds_by()
        for config, n in counter.calls_by.items():
            self.calls[config] = self.calls.get(config, 0) + n
            self.timed[config] = self.timed.get(config, 0) + counter.timed_calls(config)
            self.seconds[config] = self.seconds.get(config, 0.0) + seconds.get(config, 0.0)
            self.macs[config] = counter.macs_by[config]

    def record(self, num_samples: int) -> dict:
        total = sum(n * self.macs[c] for c, n in self.calls.items())
        timed = sum(self.timed.values())
        configs = [{"config": config_name(c), "kind": c[2], "shape": list(c[0]), "dtype": str(c[1]).replace("torch.", ""),
                    "calls": n, "macs_per_call": self.macs[c], "timed_calls": self.timed[c],
                    "seconds_per_call": self.seconds[c] / self.timed[c] if self.timed[c] else None}
                   for c, n in sorted(self.calls.items(), key=lambda kv: config_name(kv[0]))]
        return {"macs_total": total, "macs_per_sample": total / num_samples, "macs_per_call": configs,
                "seconds_per_call": sum(self.seconds.values()) / timed if timed else None,
                "timed_calls": timed, "macs_counter": MAC_COUNTER}


def merge_compute(parts: list[dict], num_samples: int) -> dict:
    """The compute record of shards run apart (results/merge.py): calls and MACs add, times pool."""
    configs: dict = {}
    for part in parts:
        for c in part["macs_per_call"]:
            seen = configs.setdefault(c["config"], {**c, "calls": 0, "timed_calls": 0, "_s": 0.0})
            seen["calls"] += c["calls"]
            seen["timed_calls"] += c["timed_calls"]
            seen["_s"] += (c["seconds_per_call"] or 0.0) * c["timed_calls"]
    total = sum(p["macs_total"] for p in parts)
    timed = sum(c["timed_calls"] for c in configs.values())
    merged = [{**{k: v for k, v in c.items() if k != "_s"},
               "seconds_per_call": c["_s"] / c["timed_calls"] if c["timed_calls"] else None} for c in configs.values()]
    return {**parts[0], "macs_total": total, "macs_per_sample": total / num_samples, "macs_per_call": merged,
            "seconds_per_call": sum(c["_s"] for c in configs.values()) / timed if timed else None,
            "timed_calls": timed}
