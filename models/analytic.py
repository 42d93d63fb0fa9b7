"""Models whose exact denoiser, marginals and probability-flow ODE are known.

Both work in EDM coordinates internally (x_e = x_t / alpha_t, s = sigma_t / alpha_t), where
the denoiser depends on the noise level only through s, so they fit any noise schedule.
"""
from __future__ import annotations

import numpy as np
import torch

from common.errors import NfebenchError

from .denoiser import FROM_X0, Denoiser, check_prediction, dim


class AnalyticModel(Denoiser):
    """Subclasses provide denoise_edm, ode_edm, and the data moments."""

    def __init__(self, noise, shape, prediction="x0"):
        self.noise = noise
        self.shape = tuple(int(v) for v in shape)
        self.prediction = check_prediction(prediction)

    def predict(self, x, t, cond=None):
        a, s = float(self.noise.alpha(t)), float(self.noise.sigma(t))
        x0 = self.denoise_edm(x / a, s / a)
        # Express the exact answer in the exposed parameterisation so the adapters are exercised.
        return FROM_X0[self.prediction](x0, x, a, s)

    def ode_solution(self, x_start: torch.Tensor, t_start: float, t_end: float) -> torch.Tensor:
        """Exact (or reference-accurate) probability-flow ODE solution from t_start to t_end."""
        a0, a1 = float(self.noise.alpha(t_start)), float(self.noise.alpha(t_end))
        s0, s1 = float(self.noise.edm_sigma(t_start)), float(self.noise.edm_sigma(t_end))
        return a1 * self.ode_edm(x_start / a0, s0, s1)

    def marginal_moments(self, t: float):
        """Exact mean and covariance (float64 numpy, flattened) of x_t."""
        a, s = float(self.noise.alpha(t)), float(self.noise.sigma(t))
        mean, cov = self.data_moments()
        return a * mean, a * a * cov + s * s * np.eye(len(mean))

    def _flat(self, x):
        return x.reshape(x.shape[0], -1)

    def noise_level_logits(self, x_e: torch.Tensor, sigmas) -> torch.Tensor:
        """Exact log p(x_e | s_k) for EDM noise levels s_k (x_e = x / alpha), shape (batch, levels), up to a
        constant shared by all entries: with a uniform prior on the levels, the softmax over a row is the
        exact noise-level posterior p(s_k | x_e) that a trained noise-level classifier approximates (DLG)."""
        v = torch.as_tensor(np.asarray(sigmas, dtype=np.float64) ** 2, device=x_e.device, dtype=x_e.dtype)
        return self.log_density_edm(self._flat(x_e), v)


class Gaussian(AnalyticModel):
    """Data ~ N(mu, U diag(var) U^T) with a fixed random orthonormal U."""

    def __init__(self, noise, shape=(3, 8, 8), var_min=1e-2, var_max=1.0, mean_scale=0.5, basis_seed=0,
                 prediction="x0"):
        super().__init__(noise, shape, prediction)
        d = dim(self.shape)
        rng = np.random.default_rng(basis_seed)
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        self.basis = q * np.sign(np.diag(r))
        self.var = np.geomspace(var_max, var_min, d)
        self.mean = mean_scale * np.tanh(rng.standard_normal(d))
        self._t = {}

    ode_reference = "closed form"

    def _tensors(self, like):
        key = (like.device, like.dtype)
        if key not in self._t:
            self._t[key] = tuple(torch.as_tensor(v, device=like.device, dtype=like.dtype)
                                 for v in (self.basis, self.var, self.mean))
        return self._t[key]

    def _scale_eigen(self, x_e, gains):
        U, _, mu = self._tensors(x_e)
        y = (self._flat(x_e) - mu) @ U
        return (mu + (y * gains) @ U.T).reshape(x_e.shape)

    def denoise_edm(self, x_e, s):
        _, var, _ = self._tensors(x_e)
        return self._scale_eigen(x_e, var / (var + s * s))

    def ode_edm(self, x_e, s0, s1):
        # Each eigen-direction of x_e - mu scales as sqrt(var + s^2) along the PF-ODE.
        _, var, _ = self._tensors(x_e)
        return self._scale_eigen(x_e, torch.sqrt((var + s1 * s1) / (var + s0 * s0)))

    def data_moments(self):
        return self.mean.copy(), (self.basis * self.var) @ self.basis.T

    def log_density_edm(self, x, s2):
        # N(x; mu, U diag(var + s^2) U^T) for every s^2 at once, in the eigenbasis (the 2 pi term dropped)
        U, var, mu = self._tensors(x)
        inv = 1.0 / (var[:, None] + s2[None, :])  # (d, levels)
        y2 = ((x - mu) @ U) ** 2
        return -0.5 * (y2 @ inv) + 0.5 * torch.log(inv).sum(0)

    def sample_data(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n float64 draws of the data distribution (what calibrations such as DPM-Solver-v3's EMS sample)."""
        z = torch.randn(n, dim(self.shape), dtype=torch.float64, generator=generator)
        U, var, mu = self._tensors(z)
        return (mu + (z * var.sqrt()) @ U.T).reshape(n, *self.shape)


class Digits(AnalyticModel):
    """An equal-weight Gaussian mixture on the 1797 scikit-learn digits (8x8, in [-1, 1])."""

    def __init__(self, noise, std=0.1, prediction="x0", ode_rtol=1e-8):
        from sklearn.datasets import load_digits

        super().__init__(noise, (1, 8, 8), prediction)
        self.std, self.ode_rtol = float(std), float(ode_rtol)
        self.centers = load_digits().data.astype(np.float64) / 8.0 - 1.0
        self._t = {}

    def _tensors(self, like):
        key = (like.device, like.dtype)
        if key not in self._t:
            c = torch.as_tensor(self.centers, device=like.device, dtype=like.dtype)
            self._t[key] = (c, (c * c).sum(1))
        return self._t[key]

    def denoise_edm(self, x_e, s):
        c, c2 = self._tensors(x_e)
        v = self.std**2 + s * s
        x = self._flat(x_e)
        logits = (x @ c.T - 0.5 * c2) / v  # the |x|^2 term is common to all components
        w = torch.softmax(logits, dim=1)
        g = self.std**2 / v
        return (g * x + (1 - g) * (w @ c)).reshape(x_e.shape)

    def ode_edm(self, x_e, s0, s1):
        """A tight adaptive solve of dx/d(log s) = x - D(x; s) (scipy DOP853), as a reference."""
        from scipy.integrate import solve_ivp

        shape, dev, dt = x_e.shape, x_e.device, x_e.dtype

        def rhs(u, y):
            x = torch.as_tensor(y, dtype=torch.float64).reshape(shape)
            return (x - self.denoise_edm(x, float(np.exp(u)))).reshape(-1).numpy()

        sol = solve_ivp(rhs, (np.log(s0), np.log(s1)), x_e.detach().cpu().double().reshape(-1).numpy(),
                        method="DOP853", rtol=self.ode_rtol, atol=self.ode_rtol)
        if not sol.success:
            raise NfebenchError(f"digits reference ODE solve failed: {sol.message}")
        return torch.as_tensor(sol.y[:, -1]).reshape(shape).to(device=dev, dtype=dt)

    def log_density_edm(self, x, s2):
        # log (1/n) sum_n N(x; c_n, (std^2 + s^2) I) for every s^2, the 2 pi and 1/n terms dropped; the nearest
        # centre's term is factored out (it is the largest at every level), so one exp per term and level
        c, c2 = self._tensors(x)
        d2 = (x * x).sum(1, keepdim=True) - 2 * x @ c.T + c2  # |x - c_n|^2
        near = d2.min(1, keepdim=True).values
        gap, v = d2 - near, self.std**2 + s2
        out = []
        for w in (-0.5 / v).split(8):  # 8 levels at a time: (batch, n, 8) stays small
            out.append(torch.log(torch.exp(gap[:, :, None] * w).sum(1)) + near * w)
        return torch.cat(out, 1) - 0.5 * x.shape[1] * torch.log(v)

    @property
    def ode_reference(self):
        return f"scipy solve_ivp DOP853, rtol=atol={self.ode_rtol}"

    def sample_data(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n float64 draws of the mixture: a uniformly chosen digit plus N(0, std^2) noise."""
        c, _ = self._tensors(torch.zeros((), dtype=torch.float64))
        k = torch.randint(len(c), (n,), generator=generator)
        z = torch.randn(n, c.shape[1], dtype=torch.float64, generator=generator)
        return (c[k] + self.std * z).reshape(n, *self.shape)

    def data_moments(self):
        mean = self.centers.mean(0)
        cov = np.cov(self.centers, rowvar=False, bias=True) + self.std**2 * np.eye(self.centers.shape[1])
        return mean, cov
