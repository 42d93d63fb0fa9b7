"""Solvers by name: configs/solver/<name>.yaml maps 1:1 to an entry here.

Each entry knows how a budget of model evaluations becomes a number of steps (``steps``) and
what a number of steps costs (``cost``), so NFE is a budget, never a step count in disguise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from common.registry import Registry


def _same(n, **_):
    return n


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: Callable
    steps: Callable = _same          # (nfe, **options) -> number of steps that fits the budget
    cost: Callable = _same           # (steps, **options) -> model evaluations those steps spend
    describe: Callable | None = None  # (steps, **options) -> extra facts for the run record
    stochastic: bool = False
    final: Callable | None = None    # (model, x, t, **options) -> x0: the step to sigma = 0 (default: model(x, t))
    # model methods the solver calls besides the denoiser (dlg: the noise-level posterior); a model without
    # them cannot run it (the analytic models have them, a neural checkpoint needs a trained classifier)
    model_needs: tuple = ()
    # (ts, noise, dtype, **options) -> sampling.calibration.Need: the solver then gets ``calibration=`` arrays
    calibration: Callable | None = None
    # (seed, shape, dtype, device, **options) -> an object the run keeps across its batches, passed as
    # ``run_state=`` (dlg's persistent chains), or None; samples must still depend on (seed, i) only
    run_state: Callable | None = None
    # (first, num_samples, **options) -> row evaluations that run state costs for samples [first, first + n),
    # apart from the per-sample NFE (for dry-run estimates; the run counts them in nfe.setup)
    setup_cost: Callable | None = None

    def min_nfe(self, **options) -> int:
        return self.cost(1, **options)


def _load_solvers():
    from . import solvers  # noqa: F401  (registers every solver module)


SOLVERS = Registry("solver", load=_load_solvers)


def register_solver(name, **spec):
    """Registers the decorated ``sample_x`` function as ``name`` with its NFE rules (SolverSpec fields)."""
    def wrap(fn):
        SOLVERS.register(name, SolverSpec(name=name, fn=fn, **spec))
        return fn

    return wrap


def get_solver(name: str) -> SolverSpec:
    return SOLVERS.get(name)
