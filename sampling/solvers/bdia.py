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
from .grid import grid_coeffs, per_run


def _on_state(g, k, c_x0, c_eps):
    """c_x0 x0 + c_eps eps at z_k as weights (on z_k, on x0): eps = (z_k - alpha_k x0) / sigma_k, so a step
    needs no eps buffer."""
    return c_eps / g.sigma[k], c_x0 - c_eps * g.alpha[k] / g.sigma[k]


@per_run
def _chain_plan(noise, ts, gamma):
    """Per step k -> k+1 (t_k, weight on z_k, on x0(z_k), on z_{k-1})."""
    g = grid_coeffs(noise, ts)
    plan = [(g.t[0], *_on_state(g, 0, g.alpha[1], g.sigma[1]), 0.0)]
    for k in range(1, len(ts) - 1):
        plan.append((g.t[k], *_on_state(g, k, g.alpha[k + 1] - gamma * g.alpha[k - 1],
                                        g.sigma[k + 1] - gamma * g.sigma[k - 1]), gamma))
    return plan


@per_run
def _invert_plan(noise, ts, gamma):
    """Per backward step k -> k-1 (t_k, weight on z_k, on x0(z_k), on z_{k+1})."""
    g = grid_coeffs(noise, ts)
    return [(g.t[k], *_on_state(g, k, (gamma * g.alpha[k - 1] - g.alpha[k + 1]) / gamma,
                                (gamma * g.sigma[k - 1] - g.sigma[k + 1]) / gamma), 1.0 / gamma)
            for k in range(len(ts) - 2, 0, -1)]


def _step(model, z, other, t, c_z, c_0, c_other):
    """c_z z + c_0 x0(z) + c_other z_other: three passes into one new buffer (the states the model saw and its
    x0 are left as they were)."""
    out = z.mul(c_z).add_(model(z, t), alpha=c_0)
    return out if c_other == 0.0 else out.add_(other, alpha=c_other)


def chain(model, x, ts, noise, gamma: float = 0.5):
    """The last two states (z_{N-1}, z_N) of the forward chain from z_0 = x."""
    prev, z = None, x
    for step in _chain_plan(noise, ts, gamma):
        prev, z = z, _step(model, z, prev, *step)
    return prev, z


def invert(model, last_two, ts, noise, gamma: float = 0.5):
    """(z_0, z_1) from the chain's last two states (z_{N-1}, z_N): N - 1 model calls."""
    if gamma == 0:
        raise NfebenchError("bdia inversion needs gamma > 0 (gamma = 0 is DDIM, which forgets z_{k-1})")
    z, nxt = last_two
    for step in _invert_plan(noise, ts, gamma):
        z, nxt = _step(model, z, nxt, *step), z
    return z, nxt


def _gamma(gamma):
    if not 0.0 <= float(gamma) <= 1.0:
        raise NfebenchError(f"bdia gamma must be in [0, 1]; got {gamma}")
    return float(gamma)


@register_solver("bdia")
def sample_bdia(model, x, ts, noise, rng=None, gamma: float = 0.5):
    return chain(model, x, ts, noise, _gamma(gamma))[1]
