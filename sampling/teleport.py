"""Analytical teleportation (Wang & Vastola, "The Unreasonable Effectiveness of Gaussian Score
Approximation for Diffusion Models and its Applications"): skip the high-noise part of any solver's path.

At high noise the score of the data is close to that of a Gaussian N(mu, C) with the data's mean and
covariance, and the probability-flow ODE of a Gaussian has a closed form. In EDM coordinates
(x_e = x_t / alpha_t, s = sigma_t / alpha_t) each eigen-direction of x_e - mu scales as
sqrt(lambda + s^2), so the initial noise is moved from sigma_T to a hand-over sigma at no NFE and the
configured solver walks the rest of the grid. The covariance may be low rank: the top-k principal
directions U, Lambda plus an isotropic variance r on the rest (r = the mean of the discarded eigenvalues,
or 0 as in the reference code, where everything outside U shrinks like s).

The run-level ``teleport`` options (configs/config.yaml):
- ``skip``: the fraction of the grid's steps replaced (k = floor(skip * N)); or ``sigma``: the EDM sigma
  at which to hand over (the steps that end at or above it are replaced);
- ``regrid``: ``restart`` makes the schedule afresh from the hand-over time with N - k steps (the
  reference: a new rho = 7 grid), ``keep`` walks the original grid's tail;
- ``stats``, ``rank``, ``residual``: where the mean and covariance come from (computed once and cached
  through the calibration stage, kind "data_stats").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import NfebenchError
from common.registry import check_choice

from .calibration import Need
from .solvers.grid import on_device
from .timesteps import make_grid

REGRIDS = ("restart", "keep")
RESIDUALS = ("mean", "zero")
OPTIONS = ("skip", "sigma", "stats", "rank", "residual", "regrid")
# grids made from a start time (restart needs that); the discrete ones are fixed lists of training steps
RESTARTABLE = ("time_uniform", "time_quadratic", "logsnr", "karras")
ANALYTIC_FAMILIES = ("gaussian", "digits")  # models that know their data's exact moments
KIND = "data_stats"


@dataclass(frozen=True)
class Handover:
    """Where the solver takes over from the Gaussian solution, and the grid it walks from there."""

    t_start: float  # where the initial noise lives (the original grid's first point)
    t: float  # hand-over time, = ts[0]
    ts: np.ndarray  # the grid the solver walks after the hand-over
    skipped: int  # steps of the original grid replaced by the teleport
    original: np.ndarray  # the grid without teleportation
    regrid: str
    need: Need | None  # the data statistics; None when nothing moves (skip = 0)

    def describe(self, noise) -> dict:
        return {"hand_over_t": self.t, "hand_over_sigma": float(noise.edm_sigma(self.t)),
                "from_sigma": float(noise.edm_sigma(self.t_start)), "steps_skipped": self.skipped,
                "regrid": self.regrid, "original_t_grid": [float(t) for t in self.original]}


def enabled(opts) -> bool:
    return bool(opts) and (opts.get("skip") is not None or opts.get("sigma") is not None)


def plan(opts: dict, noise, ts: np.ndarray, grid_opts: dict, t_end, model_cfg: dict) -> Handover | None:
    """The hand-over of a run whose solver would walk ts (None when teleport is off). No model needed."""
    opts = opts or {}
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise NfebenchError(f"unknown teleport option(s) {', '.join(unknown)}; valid: {', '.join(OPTIONS)}")
    # the choices are checked even while teleport is off: a typo must not pass silently
    regrid = check_choice("teleport.regrid", opts.get("regrid", "restart"), REGRIDS)
    check_choice("teleport.residual", opts.get("residual", "mean"), RESIDUALS)
    _rank(opts.get("rank"))
    if not enabled(opts):
        return None
    steps = len(ts) - 1
    sig = noise.edm_sigma(ts)
    if opts.get("skip") is not None and opts.get("sigma") is not None:
        raise NfebenchError("teleport.skip and teleport.sigma both set; give one (null the other)")
    if opts.get("skip") is not None:
        skip = _number("teleport.skip", opts["skip"])
        if not 0 <= skip < 1:
            raise NfebenchError(f"teleport.skip must be a fraction of the grid's steps in [0, 1); got {skip}")
        k = math.floor(skip * steps + 1e-9)
        t = float(ts[k])
    else:
        s = _number("teleport.sigma", opts["sigma"])
        if not sig[-1] < s < sig[0]:
            raise NfebenchError(f"teleport.sigma must lie inside the grid's sigma range ({sig[-1]:.6g}, {sig[0]:.6g}); "
                                f"got {s}")
        k = int(np.count_nonzero(sig[1:] >= s))
        t = float(ts[k]) if sig[k] == s else float(noise.t_of_edm_sigma(s))
    if k >= steps:
        raise NfebenchError(f"teleport skips all {steps} steps of the grid; lower teleport.skip or raise "
                            f"teleport.sigma")
    if t == ts[0]:
        return Handover(float(ts[0]), t, ts, 0, ts, regrid, None)
    return Handover(float(ts[0]), t, regridded(noise, ts, t, k, regrid, grid_opts, t_end), k, ts, regrid,
                    stats_need(opts, model_cfg))


def regridded(noise, ts, t, k, regrid, grid_opts, t_end) -> np.ndarray:
    """restart: the schedule made afresh on [t_end, t] with N - k steps; keep: t, then the original points below it."""
    if regrid == "keep":
        return np.concatenate([[t], ts[k + 1:]])
    params = dict(grid_opts)
    name = params.pop("name", None)
    if name not in RESTARTABLE:
        raise NfebenchError(f"teleport.regrid=restart cannot remake schedule '{name}' from the hand-over time "
                            f"(only {', '.join(RESTARTABLE)}); use teleport.regrid=keep")
    params.pop("sigma_max", None)  # the restarted karras grid starts at the hand-over sigma
    return make_grid(noise, len(ts) - 1 - k, name, t_end=float(ts[-1]) if t_end is None else t_end, t_start=t,
                     **params)


def _rank(rank):
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise NfebenchError(f"teleport.rank must be an integer >= 1 or null (full rank); got {rank!r}")
    return rank


def _number(key, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise NfebenchError(f"{key} must be a number; got {v!r}")
    return float(v)


# ---- the Gaussian solution ------------------------------------------------------------------------


def teleport_edm(x_e: torch.Tensor, stats: dict, s0: float, s1: float) -> torch.Tensor:
    """The PF-ODE solution at s1 from x_e at s0 (EDM coordinates) for data ~ N(mean, U Λ Uᵀ + r (I - U Uᵀ))."""
    lam, r = stats["eigvals"].astype(np.float64), float(stats["residual"])
    gain = np.sqrt((lam + s1 * s1) / (lam + s0 * s0))
    rest = math.sqrt((r + s1 * s1) / (r + s0 * s0))
    mu, U = on_device(stats, lambda: tuple(torch.as_tensor(stats[k], dtype=x_e.dtype, device=x_e.device)
                                           for k in ("mean", "eigvecs")), x_e)
    g = torch.as_tensor(gain - rest, dtype=x_e.dtype).to(x_e.device, non_blocking=True)  # depends on s0, s1
    y = x_e.reshape(x_e.shape[0], -1) - mu
    # the rest of the space shrinks by `rest`; U's directions by their own gains
    return (mu + rest * y + ((y @ U) * g) @ U.T).reshape(x_e.shape)


def teleport(x: torch.Tensor, t0: float, t1: float, noise, stats: dict) -> torch.Tensor:
    """x at time t0 of the model's schedule, moved along the Gaussian PF-ODE to t1 (any alpha_t, sigma_t)."""
    if stats["mean"].size != x[0].numel():
        raise NfebenchError(f"teleport statistics have dimension {stats['mean'].size} but the model's samples "
                            f"{tuple(x.shape[1:])} have {x[0].numel()}; teleport.stats must come from data of "
                            f"the model's shape")
    a0, a1 = float(noise.alpha(t0)), float(noise.alpha(t1))
    return a1 * teleport_edm(x / a0, stats, float(noise.edm_sigma(t0)), float(noise.edm_sigma(t1)))


# ---- the data statistics ----------------------------------------------------------------------------


def eigen_stats(mean, cov, rank: int | None, residual: str) -> dict:
    """Top-rank eigenpairs of cov (largest first) and the isotropic variance of the rest."""
    lam, vec = np.linalg.eigh(np.asarray(cov, np.float64))
    return truncated(mean, np.clip(lam, 0.0, None), vec, rank, residual)


def truncated(mean, lam, vec, rank: int | None, residual: str) -> dict:
    """The rank largest eigenpairs (all when rank is None) and the isotropic variance of the dropped ones."""
    order = np.argsort(lam, kind="stable")[::-1]
    k = len(lam) if rank is None else min(int(rank), len(lam))
    rest = lam[order[k:]]
    r = float(rest.mean()) if residual == "mean" and len(rest) else 0.0
    return {"mean": np.asarray(mean, np.float64).reshape(-1), "eigvals": lam[order[:k]],
            "eigvecs": np.ascontiguousarray(vec[:, order[:k]]), "residual": np.asarray(r)}


def moments(batches) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (biased) covariance of an iterable of (n, d) float64 arrays, one batch at a time."""
    n, s, ss = 0, 0.0, 0.0
    for x in batches:
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        n, s, ss = n + len(x), s + x.sum(0), ss + x.T @ x
    mean = s / n
    return mean, ss / n - np.outer(mean, mean)


def digits_images() -> np.ndarray:
    """The 1797 scikit-learn digits scaled to [-1, 1] (pixel / 8 - 1), as `digits_unet` was trained."""
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float64) / 8.0 - 1.0


def _image_batches(files, batch=256):
    from metrics.references import _load_image

    for lo in range(0, len(files), batch):
        yield np.stack([_load_image(f).numpy().reshape(-1) for f in files[lo: lo + batch]])


def _npz_stats(path: Path, rank, residual) -> dict:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    if "images" in arrays:
        x = arrays["images"]
        if x.dtype == np.uint8:  # 0..255, channels last as image files hold them
            x = (x.transpose(0, 3, 1, 2) if x.ndim == 4 and x.shape[-1] in (1, 3) else x) / 127.5 - 1
        return eigen_stats(*moments([x.reshape(len(x), -1)]), rank, residual)
    if {"mean", "eigvals", "eigvecs"} <= set(arrays):
        return truncated(arrays["mean"], np.asarray(arrays["eigvals"], np.float64),
                         np.asarray(arrays["eigvecs"], np.float64), rank, residual)
    raise NfebenchError(f"teleport.stats npz {path} needs 'images' (N x C x H x W in [-1, 1], or uint8) or "
                        f"'mean', 'eigvals' and 'eigvecs'; it has {', '.join(arrays) or 'nothing'}")


def stats_need(opts: dict, model_cfg: dict) -> Need:
    """The calibration Need of the data statistics: the source's identity (a file hash for folders and
    npz files), rank and residual rule key the cache; computing them costs no model evaluation."""
    rank, residual = _rank(opts.get("rank")), check_choice("teleport.residual", opts.get("residual", "mean"), RESIDUALS)
    src = opts.get("stats", "auto")
    if src == "auto":
        src = "model" if model_cfg.get("family") in ANALYTIC_FAMILIES else \
            "digits" if model_cfg.get("name") == "digits_unet" else None
        if src is None:
            raise NfebenchError(f"teleport.stats=auto knows no data for model '{model_cfg.get('name')}'; set teleport."
                                f"stats to an image folder or an npz ('images', or 'mean'+'eigvals'+'eigvecs')")
    settings = {"rank": rank, "residual": residual}
    if src == "model":
        if model_cfg.get("family") not in ANALYTIC_FAMILIES:
            raise NfebenchError(f"teleport.stats=model needs an analytic model ({', '.join(ANALYTIC_FAMILIES)}); "
                                f"model '{model_cfg.get('name')}' knows no data moments")
        return Need(KIND, {**settings, "source": "model"},
                    lambda model, device: eigen_stats(*model.data_moments(), rank, residual))
    if src == "digits":
        from sklearn import __version__ as sk

        return Need(KIND, {**settings, "source": f"sklearn.load_digits/8-1 (scikit-learn {sk})"},
                    lambda model, device: eigen_stats(*moments([digits_images()]), rank, residual))
    return _path_need(Path(str(src)).expanduser(), settings, rank, residual)


def _path_need(path: Path, settings, rank, residual) -> Need:
    from metrics.features import file_sha256
    from metrics.references import IMAGE_EXTS, folder_hash

    if path.is_dir():
        path = path.resolve()
        files = sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise NfebenchError(f"teleport.stats folder {path} holds no {'/'.join(IMAGE_EXTS)} images; put the "
                                f"dataset's images there")
        return Need(KIND, {**settings, "source": f"folder:{path}", "sha256": folder_hash(path, files)},
                    lambda model, device: eigen_stats(*moments(_image_batches(files)), rank, residual))
    if path.is_file() and path.suffix == ".npz":
        path = path.resolve()
        return Need(KIND, {**settings, "source": f"npz:{path}", "sha256": file_sha256(path)},
                    lambda model, device: _npz_stats(path, rank, residual))
    raise NfebenchError(f"teleport.stats: no image folder or .npz file at {path}; put the dataset's images "
                        f"(png/jpg) in that folder, or an npz with 'images' or 'mean'+'eigvals'+'eigvecs' there "
                        f"(or stats=auto for digits, digits_unet, gaussian)")
