"""Checks of a run's config that must fail in one line before anything is loaded.

Option types come from each solver function's own defaults (a float default takes numbers, an
int default integers, a bool default true/false), so a new option is checked without being listed here. Ranges are
by option name: the same name means the same thing in every solver and schedule.
"""
from __future__ import annotations

import inspect
import math
from numbers import Real

from common.errors import NfebenchError

# name -> (lowest allowed value, whether that value itself is allowed)
LOWER_BOUNDS = {
    "eta": (0, True), "S_churn": (0, True), "S_tmin": (0, True), "S_tmax": (0, True), "S_noise": (0, True),
    "n_corrector": (0, True), "snr": (0, True), "window": (0, True), "width": (0, True), "cutoff": (0, True),
    "data_var": (0, True), "order": (1, True), "steps_offset": (0, True),
    "rho": (0, False), "power": (0, False), "sigma_min": (0, False), "sigma_max": (0, False),
}
UPPER_BOUNDS = {"width": (1, False)}  # time_shift's candidate window spans less than one step


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def check_number(where: str, v, integer: bool = False) -> None:
    if not _is_number(v) or (integer and int(v) != v) or not math.isfinite(v):
        kind = "an integer" if integer else "a number"
        raise NfebenchError(f"{where} must be {kind}; got {v!r}")


def check_range(where: str, name: str, v) -> None:
    if name in LOWER_BOUNDS and v is not None:
        check_number(where, v)
        lo, closed = LOWER_BOUNDS[name]
        if v < lo or (v == lo and not closed):
            raise NfebenchError(f"{where} must be {'>=' if closed else '>'} {lo}; got {v!r}")
    if name in UPPER_BOUNDS and v is not None:
        hi, closed = UPPER_BOUNDS[name]
        if v > hi or (v == hi and not closed):
            raise NfebenchError(f"{where} must be {'<=' if closed else '<'} {hi}; got {v!r}")


def check_typed(where: str, v, default) -> None:
    """v must have the kind of value the option's default has (None: anything)."""
    if default is None or default is inspect.Parameter.empty:
        return
    if isinstance(default, bool):
        if not isinstance(v, bool):
            raise NfebenchError(f"{where} must be true or false; got {v!r}")
    elif _is_number(default):
        check_number(where, v, integer=isinstance(default, int))
    # string options (lower_order_final, variant, ...) are parsed and named by their solver


def check_solver_options(name: str, fn, opts: dict) -> None:
    params = inspect.signature(fn).parameters
    try:
        for k, v in opts.items():
            if k in params:
                check_typed(f"solver.{k}", v, params[k].default)
            check_range(f"solver.{k}", k, v)
    except NfebenchError as err:
        raise NfebenchError(f"bad options for solver '{name}': {err}") from None


def check_schedule_options(opts: dict) -> None:
    for k, v in opts.items():
        check_range(f"schedule.{k}", k, v)


def check_t_end(t_end, T: float) -> None:
    if t_end is None:
        return
    check_number("t_end", t_end)
    if not 0 < t_end < T:
        raise NfebenchError(f"t_end must lie in (0, T) = (0, {T:g}) or be null (the schedule's eps); got {t_end!r}")


def check_device(name):
    """The torch.device a run asks for, if this machine has it."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise NfebenchError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise NfebenchError(f"device={name} but this machine has no usable CUDA GPU; use device=cpu or auto")
        if dev.index is not None and dev.index >= n:
            raise NfebenchError(f"device={name} but only {n} CUDA GPU(s) are visible (cuda:0..cuda:{n - 1})")
    elif dev.type != "cpu":
        raise NfebenchError(f"device={name} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


def checkpoint_files(model_cfg: dict) -> None:
    """Every checkpoint component a diffusers model family will load is there (config + weights).

    The components are the builder's `subfolder` / `*_subfolder` arguments, defaults included, so a
    family's list is its builder's signature.
    """
    from importlib import import_module

    from models.registry import FAMILIES, NOT_BUILD_KEYS

    family = model_cfg.get("family")
    if family not in FAMILIES or not family.startswith("diffusers_"):
        return
    from models import loaders
    from models.hf import locate

    module, fn = FAMILIES.get(family).target
    builder = getattr(import_module(module, "models"), fn)
    cfg = {k: v for k, v in model_cfg.items() if k not in NOT_BUILD_KEYS}
    src = loaders._source(cfg.get("repo_id"), cfg.get("path"), cfg.get("revision"), cfg.get("cache_dir"))
    for name, p in inspect.signature(builder).parameters.items():
        if name == "subfolder" or name.endswith("_subfolder"):
            locate(src, cfg.get(name, p.default))
