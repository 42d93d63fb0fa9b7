"""Passes over a whole batch, counted in an untimed probe run: the arithmetic part of a solver's cost.

On a CPU every full-tensor elementwise op costs about the same (memory-bound), so the number of aten ops
that read or write a batch-sized tensor, per NFE, sets how close to the floor a solver can get without
changing its update rule. Counted at the aten level (TorchDispatchMode), so an op is one pass whatever
Python wrote it (an operator, an in-place method, a torch function).

Not counted: ops that touch no tensor data (views and metadata: view, reshape's alias, as_strided, detach,
alias, expand, empty, resize_), ops on smaller tensors (per-sample slices, coefficient arrays), and the
Gaussian draws: random ops anywhere (randn, normal_, counted apart), and everything inside the noise source's
draw()/like() (nfebench's per-sample streams fill one slice per sample and stack them), so a stochastic
solver's count is its own arithmetic on the noise, comparable with the floor's one add_ of a batched randn.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# ops that are not views by aten's schema but still touch no data: allocation and reinterpretation
NO_DATA = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "resize_", "set_",
           "_unsafe_view", "lift_fresh"}


def _name(func) -> str:
    return func.overloadpacket.__name__


def touches_data(func) -> bool:
    return not func.is_view and _name(func) not in NO_DATA


def is_random(func) -> bool:
    return torch.Tag.nondeterministic_seeded in func.tags


# ops whose result the host reads: on a GPU, each waits for the device (.item(), float() or bool() of a
# tensor, torch.equal, nonzero, unique, a boolean-mask index); CPU tensors dispatch the same ops
HOST_READS = {"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.equal.default",
              "aten.nonzero.default", "aten.masked_select.default", "aten._unique2.default",
              "aten.unique_dim.default", "aten.unique_consecutive.default", "aten.allclose.default",
              "aten.repeat_interleave.Tensor"}
_MASK_INDEXED = {"aten.index.Tensor", "aten.index_put_.default", "aten.index_put.default"}


def reads_on_host(func, args, kwargs) -> bool:
    """Whether this aten call makes the host wait for the device: a read of a value, or a copy between
    devices that blocks (any copy to the host; one from the host without non_blocking, before which torch
    synchronises the stream). Copies show only when a run uses another device, e.g. "meta" on a CPU."""
    name = str(func)
    if name in HOST_READS:
        return True
    if name in _MASK_INDEXED:
        indices = (args[1] if len(args) > 1 else None) or ()
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
    if name == "aten._to_copy.default":
        src, dst, non_blocking = args[0].device, kwargs.get("device"), kwargs.get("non_blocking", False)
    elif name == "aten.copy_.default":
        src, dst = args[1].device, args[0].device
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    else:
        return False
    dst = src if dst is None else torch.device(dst)
    return dst != src and (dst.type == "cpu" or not non_blocking)


def built_on_device(func, kwargs) -> bool:
    """Whether a torch function call builds a tensor from host data (a list, an array) straight onto another
    device: a blocking copy that torch makes below the dispatcher, so only a TorchFunctionMode sees it."""
    device = kwargs.get("device")
    return func in (torch.as_tensor, torch.tensor) and device is not None and torch.device(device).type != "cpu"


class PassCounter(TorchDispatchMode):
    """Counts aten ops any of whose tensor inputs or outputs has at least `numel` elements (a reduction
    reads the whole batch as an elementwise op does), by op name; random ops go to `random`. Also counts,
    draws included, the ops that would make the host wait for a GPU (`host_reads`, see reads_on_host)."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.passes, self.random, self.paused = numel, Counter(), Counter(), 0
        self.host_reads = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if reads_on_host(func, args, kwargs):
            self.host_reads[str(func)] += 1
        out = func(*args, **kwargs)
        if not self.paused and touches_data(func) and any(
                isinstance(t, torch.Tensor) and t.numel() >= self.numel
                for t in tree_leaves((args, kwargs, out))):
            (self.random if is_random(func) else self.passes)[str(func)] += 1
        return out

    @property
    def total(self) -> int:
        return sum(self.passes.values())


class UncountedNoise:
    """A noise source whose draws the counter does not see (see the module docstring)."""

    def __init__(self, inner, counter: PassCounter):
        self.inner, self.counter = inner, counter

    def _quiet(self, f, *args):
        self.counter.paused += 1
        try:
            return f(*args)
        finally:
            self.counter.paused -= 1

    def draw(self):
        return self._quiet(self.inner.draw)

    def like(self, x):
        return self._quiet(self.inner.like, x)


def count_passes(call, numel: int, rng=None) -> PassCounter:
    """Run call(rng') under a PassCounter, rng' being rng with its draws hidden (None stays None)."""
    counter = PassCounter(numel)
    with counter:
        call(UncountedNoise(rng, counter) if rng is not None else None)
    return counter
