"""The calibration stage: numbers a method computes from the model before it samples.

Computed once per (checkpoint, settings) and cached like the FID reference statistics: the key is
sha256 of the model's fingerprint (its weights, or its config for analytic models), the kind and
the method's settings (grid, estimator options); each file carries a checksum of its arrays, so a
stale or damaged file is rebuilt. What it cost (model evaluations, seconds) is stored with it and
copied into every record that uses it. ``calibration.mode``:
- auto: use the cache, compute on a miss;
- require: a miss is an error (a sweep must not silently spend GPU-hours calibrating);
- recompute: ignore the cache and overwrite it.
``calibrate_only=true`` computes and caches without sampling, so calibration can be its own SLURM job.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from common.checked_npz import read_checked, write_checked
from common.errors import NfebenchError
from common.registry import check_choice
from models.counter import CountedDenoiser
from sampling.calibration import Need

MODES = ("auto", "require", "recompute")
DEFAULT_DIR = "~/.cache/nfebench/calibration"


def options(cfg: dict) -> tuple[str, Path]:
    c = cfg.get("calibration") or {}
    mode = check_choice("calibration.mode", c.get("mode", "auto"), MODES)
    root = Path(c.get("dir") or os.environ.get("NFEBENCH_CALIBRATION_CACHE") or DEFAULT_DIR).expanduser()
    return mode, root


def needs(cfg: dict, p) -> list[Need]:
    """What this run's plan asks to be calibrated (none for most solvers): the solver's need, and the data
    statistics of a teleport (sampling/teleport.py)."""
    return [n for n in (p.calibration, p.teleport and p.teleport.need) if n]


def fingerprint(model, cfg: dict) -> str:
    """A network's identity is its weights (wherever the file sits); an analytic model's is its config."""
    h = hashlib.sha256()
    nets = getattr(model, "_nets", None)
    if nets:
        for net in nets:
            for name, v in sorted(net.state_dict().items()):
                h.update(name.encode() + v.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
        desc = {"prediction": model.prediction, "shape": list(model.shape), "noise": model.noise.describe()}
    else:
        desc = {k: v for k, v in cfg["model"].items() if k != "dtype"}
    thresholding = cfg.get("dynamic_thresholding") or {}
    desc["dynamic_thresholding"] = thresholding if thresholding.get("enabled") else None
    h.update(json.dumps(desc, sort_keys=True, default=str).encode())
    return h.hexdigest()


def cache_key(model_id: str, need: Need) -> str:
    src = {"model": model_id, "kind": need.kind, "settings": need.settings}
    return hashlib.sha256(json.dumps(src, sort_keys=True, default=str).encode()).hexdigest()


def prepare(cfg: dict, p, model, device) -> tuple[dict, dict]:
    """({kind: arrays} for the solver, {kind: what the record says}), found in the cache or computed."""
    wanted = needs(cfg, p)
    if not wanted:
        return {}, {}
    mode, root = options(cfg)
    model_id = fingerprint(model, cfg)
    arrays, info = {}, {}
    for need in wanted:
        key = cache_key(model_id, need)
        path = root / need.kind / f"{key}.npz"
        got = None if mode == "recompute" else read_checked(path, required=("meta",))
        status = "hit"
        if got is None:
            if mode == "require":
                raise NfebenchError(f"calibration '{need.kind}' is not cached ({path}) and calibration.mode=require; "
                                    f"compute it first with calibrate_only=true (e.g. as its own SLURM job)")
            with _locked(path):
                # a sweep's jobs share one calibration: whoever waited here finds the first one's file
                got = None if mode == "recompute" else read_checked(path, required=("meta",))
                if got is None:
                    got, status = _compute(need, model, device, model_id, path), "computed"
        meta = json.loads(str(got.pop("meta")))
        arrays[need.kind] = got
        info[need.kind] = {"status": status, "file": str(path), "key": key, **meta}
    return arrays, info


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)  # lockf: POSIX locks, which NFS (shared cluster caches) honours
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def _compute(need: Need, model, device, model_id: str, path: Path) -> dict:
    counter = CountedDenoiser(model, budget=None)
    start = time.perf_counter()
    got = {k: np.asarray(v) for k, v in need.compute(counter, device).items()}
    meta = {"nfe": counter.count, "network_evals": counter.network_evals, "seconds": time.perf_counter() - start,
            "created_at": datetime.now(timezone.utc).isoformat(), "settings": need.settings,
            "model_fingerprint": model_id}
    got["meta"] = np.asarray(json.dumps(meta, sort_keys=True, default=str))
    write_checked(path, got)
    return got


def check(cfg: dict, p) -> None:
    """Before anything loads: a valid mode, and calibrate_only only for a run that has something to calibrate."""
    options(cfg)
    only = cfg.get("calibrate_only", False)
    if not isinstance(only, bool):
        raise NfebenchError(f"calibrate_only must be true or false; got {only!r}")
    if only and not needs(cfg, p):
        raise NfebenchError(f"calibrate_only=true but solver '{p.spec.name}' with these options needs no calibration")
