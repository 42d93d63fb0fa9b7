"""DC-Solver's cascade polynomial regression: the compensation ratio of step s as a function of the step,
the NFE n and the guidance scale g, so that unseen settings need no search.

    rho(s; n, g) = sum_i c_i(n, g) x^i,  x = s / n,   c_i a quadratic in g/12 whose three coefficients
                   are each a quadratic in n/50;  rho = 1 for s <= dc_order (never compensated).

The coefficients are an array (degree+1, 3, 3): [i, j, k] multiplies x^i (g/12)^(2-j) (n/50)^(2-k), the
layout (and scaling) of the reference's published file, which exists for Stable Diffusion 2.1 only.
Fitted as a cascade: per setting a polynomial in x, then each of its coefficients across n, then those
across g; an axis with fewer than three settings gets a lower degree (one guidance scale: constant in g).
"""
from __future__ import annotations

import numpy as np

NFE_SCALE, GUIDANCE_SCALE, INNER = 50.0, 12.0, 3  # quadratics in n and g: 3 coefficients, highest power first


def predict(coeffs, steps: int, guidance: float = 0.0, dc_order: int = 2) -> np.ndarray:
    """rho_s for s = 1..steps."""
    c = np.asarray(coeffs, dtype=np.float64).reshape(-1, INNER, INNER)
    powers = INNER - 1 - np.arange(INNER)
    on_x = c @ (steps / NFE_SCALE) ** powers @ (guidance / GUIDANCE_SCALE) ** powers  # c_i(n, g)
    s = np.arange(1, steps + 1)
    rho = np.polynomial.polynomial.polyval(s / steps, on_x)
    return np.where(s <= dc_order, 1.0, rho)


def _lstsq_poly(x, y, degree: int) -> np.ndarray:
    """Least-squares polynomial (lowest power first, minimum norm when underdetermined) of y over x, per column."""
    V = np.vander(np.asarray(x, dtype=np.float64), degree + 1, increasing=True)
    y = np.asarray(y, dtype=np.float64)
    return np.linalg.lstsq(V, y.reshape(len(y), -1), rcond=None)[0].reshape(degree + 1, *y.shape[1:])


def _quadratic_across(x, y) -> np.ndarray:
    """Coefficients (highest power first, padded to a quadratic) of a fit of y (rows: settings) across x."""
    low_first = _lstsq_poly(x, y, min(INNER - 1, len(x) - 1))
    return np.concatenate([np.zeros((INNER - len(low_first), *low_first.shape[1:])), low_first[::-1]])


def fit(ratios: dict, dc_order: int = 2, degree: int = 3) -> np.ndarray:
    """ratios: {(guidance, nfe): fitted rho_1..rho_nfe} -> coefficients (degree+1, 3, 3) for ``predict``."""
    guidances = sorted({g for g, _ in ratios})
    per_guidance = []
    for g in guidances:
        nfes = sorted(n for gg, n in ratios if gg == g)
        in_x = []
        for n in nfes:
            s = np.arange(dc_order + 1, n + 1)
            in_x.append(_lstsq_poly(s / n, np.asarray(ratios[(g, n)])[s - 1], degree))
        per_guidance.append(_quadratic_across(np.array(nfes) / NFE_SCALE, np.array(in_x)))  # (3: n power, degree+1)
    across = _quadratic_across(np.array(guidances) / GUIDANCE_SCALE, np.array(per_guidance))  # (3: g, 3: n, degree+1)
    return np.transpose(across, (2, 0, 1)).copy()
