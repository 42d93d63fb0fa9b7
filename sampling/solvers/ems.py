"""DPM-Solver-v3's empirical model statistics (EMS; Zheng, Lu, Chen & Zhu 2023, Sec. 3.2, Appendix C).

On a grid uniform in log-SNR lambda, three vectors with the shape of a sample:
    l(lambda) = E[diag(sigma d eps/dx)]          the best diagonal linear part of the noise predictor,
    s, b      = per-dimension least squares  f' ~ s f + b,  f = (sigma eps - l x) / alpha,
                f' = df/dlambda along the probability-flow ODE,
expectations over x = alpha x0 + sigma n from the forward process on data.

Worked in y = x / alpha, where the ODE is dy/dlambda = D - y (D: the model's x0 prediction at x = alpha y)
and eps = e^lambda (y - D), so
    sigma d eps/dx = I - dD/dy,    f = (1 - l) y - D,
    f' = -l' y + (1 - l)(D - y) - dD/dlambda,    dD/dlambda = dD/dy (D - y) + dD/dlambda|_y.
Estimators:
- diag(dD/dy) by Hutchinson, E_v[v * (dD/dy v)] with Rademacher v; the product by torch.func.jvp;
- dD/dy (D - y) by one more jvp; dD/dlambda|_y by a central difference of FD_STEP in lambda (models take
  their time as a host float, so no tangent can flow through it);
- l' by np.gradient over the grid. Every lambda uses the same data, noise and probes (common random
  numbers), so l is smooth in lambda and its difference quotient is not dominated by sampling noise;
- s and b from per-dimension moments of (y, D, dD/dlambda), accumulated over batches once l is known.
Cost: each jvp is one counted evaluation (one pass of the network with dual numbers, about 2-3 forward
passes of compute), so one lambda point costs (probes + 3) NFE per batch of samples.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from common.errors import NfebenchError

RIDGE = 1e-3  # s penalty, relative to the mean Var(f) over dimensions (see fit)
FD_STEP = 1e-3  # central difference in lambda for dD/dlambda at fixed y
ESTIMATOR = "hutchinson-jvp/1"  # bump when the estimator's numbers change (it is part of the cache key)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def lambda_grid(noise, t_start: float, t_end: float, points: int) -> np.ndarray:
    """points values uniform in lambda from lambda(t_start) (noisiest) to lambda(t_end)."""
    return np.linspace(float(noise.lam(t_start)), float(noise.lam(t_end)), int(points))


def _sklearn_digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.as_tensor(load_digits().data / 8.0 - 1.0).reshape(-1, 1, 8, 8)


DATASETS = {"digits": _sklearn_digits}  # data by name: solver.ems_data=<name>, or a model config's `data`


def check_data(data) -> str | None:
    """The data option: a dataset name, an absolute path, or None (the model's own data); fails if missing."""
    if data is None or data in DATASETS:
        return data
    p = Path(str(data)).expanduser().resolve()
    if not (p.is_dir() or (p.is_file() and p.suffix == ".npz")):
        raise NfebenchError(f"EMS data {data} (solver.ems_data or model.data): no such dataset "
                            f"({', '.join(DATASETS)}), image folder or .npz file")
    return str(p)


def data_samples(model, data: str | None, n: int, generator: torch.Generator) -> torch.Tensor:
    """n float64 data samples in the model's space: its own distribution (analytic models), the dataset its
    config names (``data``), or ``data`` (a dataset name, an image folder or an .npz of images)."""
    if data is None and hasattr(model, "sample_data"):
        return model.sample_data(n, generator)
    data = check_data(data or getattr(model, "data", None))
    if data is None:
        raise NfebenchError("the EMS need data samples and this model has no data distribution of its own; "
                            "set solver.ems_data to a dataset name, an image folder or an .npz of images in [-1, 1]")
    if getattr(model, "latent", False):
        raise NfebenchError("the EMS need data in the model's space and this model samples latents; EMS from "
                            "encoded data are not supported")
    images = DATASETS[data]() if data in DATASETS else _load_images(Path(data))
    if tuple(images.shape[1:]) != tuple(model.shape):
        raise NfebenchError(f"EMS data {data}: expected samples of shape {list(model.shape)}, got "
                            f"{len(images)} of shape {list(images.shape[1:])}")
    return images[torch.randint(len(images), (n,), generator=generator)]


def _load_images(path: Path) -> torch.Tensor:
    """Images in [-1, 1] as (N, C, H, W) float64: a folder of image files, or an .npz's first array
    (uint8 in [0, 255] or floats in [-1, 1]; NCHW, NHWC or NHW)."""
    if path.is_dir():
        from PIL import Image

        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        arr = np.stack([np.asarray(Image.open(f)) for f in files]) if files else np.zeros((0, 0, 0))
    else:
        with np.load(path) as z:
            arr = z[z.files[0]]
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
        arr = arr.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    x = torch.as_tensor(arr.astype(np.float64))
    return x / 127.5 - 1 if arr.dtype == np.uint8 else x


class _Moments:
    """Per-dimension running sums over samples of the products the EMS need (float64)."""

    NAMES = ("y", "D", "dD", "yy", "yD", "DD", "ydD", "DdD", "hutch")

    def __init__(self):
        self.n, self.sums = 0, dict.fromkeys(self.NAMES, 0.0)

    def add(self, y, D, dD, hutch):
        y, D, dD, hutch = (v.double() for v in (y, D, dD, hutch))
        terms = {"y": y, "D": D, "dD": dD, "yy": y * y, "yD": y * D, "DD": D * D, "ydD": y * dD, "DdD": D * dD,
                 "hutch": hutch}
        for k, v in terms.items():
            self.sums[k] = self.sums[k] + v.sum(0)
        self.n += len(y)

    def means(self) -> dict:
        return {k: (v / self.n).cpu().numpy() for k, v in self.sums.items()}


def _point(model, x0, n, probes, lam, device, dtype, batch: int) -> _Moments:
    """The moments at one lambda over all samples."""
    noise = model.noise
    t, a, sig = (float(f(noise.t_of_lam(lam))) for f in (lambda u: u, noise.alpha, noise.edm_sigma))
    t_up, t_down = float(noise.t_of_lam(lam + FD_STEP)), float(noise.t_of_lam(lam - FD_STEP))
    a_up, a_down = float(noise.alpha(t_up)), float(noise.alpha(t_down))
    m = _Moments()
    for lo in range(0, len(x0), batch):
        y = (x0[lo: lo + batch] + sig * n[lo: lo + batch]).to(device=device, dtype=dtype)

        def denoise(u):
            return model(a * u, t)

        # the plain calls first: a network that moves to its device on its first call must not do so inside
        # a jvp (its parameters would belong to that transform)
        dD_dlam = (model(a_up * y, t_up) - model(a_down * y, t_down)) / (2 * FD_STEP)
        hutch = 0.0
        for v in probes[:, lo: lo + batch].to(device=device, dtype=dtype):
            D, Jv = torch.func.jvp(denoise, (y,), (v,))
            hutch = hutch + v * Jv / len(probes)
        dD = torch.func.jvp(denoise, (y,), (D - y,))[1] + dD_dlam
        m.add(y, D, dD, hutch)
    return m


def estimate(model, lambdas, samples: int, probes: int, seed: int, data=None, device="cpu",
             dtype=torch.float64, batch: int = 256) -> dict[str, np.ndarray]:
    """{"l", "s", "b": (points, *shape) float64, "lambdas": (points,)} for a (counted) model."""
    gen = torch.Generator().manual_seed(int(seed))
    x0 = data_samples(model, data, samples, gen)
    n = torch.randn(x0.shape, dtype=torch.float64, generator=gen)
    v = torch.randint(0, 2, (probes, *x0.shape), generator=gen).double() * 2 - 1
    # forward-mode jvp needs no autograd graph; the fused attention kernels have no forward-mode derivative
    # (diffusers' UNets call scaled_dot_product_attention), the math one is plain differentiable ops
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        per = [_point(model, x0, n, v, float(lam), device, dtype, batch).means() for lam in lambdas]
    return fit({k: np.stack([p[k] for p in per]) for k in _Moments.NAMES}, np.asarray(lambdas, dtype=np.float64))


def fit(M: dict, lambdas: np.ndarray, ridge: float = RIDGE) -> dict[str, np.ndarray]:
    """l, s, b from the per-lambda moments M (each (points, *shape)).

    s is a ridge regression: the penalty is ``ridge`` times the mean over dimensions of Var(f) at that
    lambda. Where a dimension's f barely varies (a pixel that is nearly constant over the data, e.g. the
    digits' borders), Var(f) is a difference of nearly equal numbers and the plain quotient is noise
    (|s| in the thousands, e^S overflowing); the penalty shrinks those s to 0 and leaves the others."""
    l = 1.0 - M["hutch"]
    dl = np.gradient(l, lambdas, axis=0) if len(lambdas) > 1 else np.zeros_like(l)  # one point: no l'
    var_y, var_D = M["yy"] - M["y"] ** 2, M["DD"] - M["D"] ** 2
    cov_yD, cov_ydD, cov_DdD = M["yD"] - M["y"] * M["D"], M["ydD"] - M["y"] * M["dD"], M["DdD"] - M["D"] * M["dD"]
    # f = A y - D and f' = P y + A D - dD with A = 1 - l, P = -l' - A
    A, P = 1.0 - l, -dl - (1.0 - l)
    var_f = np.maximum(A * A * var_y - 2 * A * cov_yD + var_D, 0.0)
    cov = P * A * var_y - P * cov_yD + A * A * cov_yD - A * var_D - A * cov_ydD + cov_DdD
    axes = tuple(range(1, var_f.ndim))
    s = cov / (var_f + ridge * var_f.mean(axis=axes, keepdims=True) + 1e-300)
    b = (P * M["y"] + A * M["D"] - M["dD"]) - s * (A * M["y"] - M["D"])
    return {"l": l, "s": s, "b": b, "lambdas": lambdas}
