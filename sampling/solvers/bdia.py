"""BDIA-DDIM (Zhang et al. 2024, "Exact Diffusion Inversion via Bi-directional Integration Approximation").

With DDIM_{k->j}(z_k) = alpha_j x0(z_k) + sigma_j eps(z_k) (k, j grid positions, k = 0 the noisiest), each
step after the first plain DDIM step is

    z_{k+1} = gamma z_{k-1} - gamma DDIM_{k->k-1}(z_k) + DDIM_{k->k+1}(z_k)

(the paper's z_{i-1} = gamma z_{i+1} - gamma DDIM_{i->i+1}(z_i) + DDIM_{i->i-1}(z_i), indexed from the data
end). One model call per step; gamma = 0 is DDIM. The step is linear in z_{k-1}, so the chain runs backwards
from its last two states (``invert``):

    z_{k-1} = [z_{k+1} - DDIM_{k->k+1}(z_k) + gamma DDIM_{k->k-1}(z_k)] / gamma,

which divides by gamma at every step: rounding errors grow roughly like gamma^-N.
"""
from __future__ import annotations

from common.errors import NfebenchError
from ..registry import register_solver
from .grid import grid_coeffs


def _x0_eps(model, z, g, k):
    x0 = model(z, g.t[k])
    return x0, (z - g.alpha[k] * x0) / g.sigma[k]


def _bdia_step(x0, eps, z_other, c_x0, c_eps, c_other):
    """c_x0 x0 + c_eps eps + c_other z_other, in one new buffer."""
    return x0.mul(c_x0).add_(eps, alpha=c_eps).add_(z_other, alpha=c_other)


def chain(model, x, ts, noise, gamma: float = 0.5):
    """The last two states (z_{N-1}, z_N) of the forward chain from z_0 = x."""
    g = grid_coeffs(noise, ts)
    x0, eps = _x0_eps(model, x, g, 0)
    prev, z = x, x0.mul(g.alpha[1]).add_(eps, alpha=g.sigma[1])
    for k in range(1, len(ts) - 1):
        x0, eps = _x0_eps(model, z, g, k)
        prev, z = z, _bdia_step(x0, eps, prev, g.alpha[k + 1] - gamma * g.alpha[k - 1],
                                g.sigma[k + 1] - gamma * g.sigma[k - 1], gamma)
    return prev, z


def invert(model, last_two, ts, noise, gamma: float = 0.5):
    """(z_0, z_1) from the chain's last two states (z_{N-1}, z_N): N - 1 model calls."""
    if gamma == 0:
        raise NfebenchError("bdia inversion needs gamma > 0 (gamma = 0 is DDIM, which forgets z_{k-1})")
    g = grid_coeffs(noise, ts)
    z, nxt = last_two
    for k in range(len(ts) - 2, 0, -1):
        x0, eps = _x0_eps(model, z, g, k)
        z, nxt = _bdia_step(x0, eps, nxt, (gamma * g.alpha[k - 1] - g.alpha[k + 1]) / gamma,
                            (gamma * g.sigma[k - 1] - g.sigma[k + 1]) / gamma, 1.0 / gamma), z
    return z, nxt


def _gamma(gamma):
    if not 0.0 <= float(gamma) <= 1.0:
        raise NfebenchError(f"bdia gamma must be in [0, 1]; got {gamma}")
    return float(gamma)


@register_solver("bdia")
def sample_bdia(model, x, ts, noise, rng=None, gamma: float = 0.5):
    return chain(model, x, ts, noise, _gamma(gamma))[1]
