"""The fast paths give the same samples: every solver config's (and option variant's) output on small
fixed inputs, against results/bench/solver_outputs.npz written from main's code before the fast paths
(`python -m launch.bench --write-reference`)."""
from __future__ import annotations

import io
import math

import numpy as np
import torch

from common.files import atomic_write_bytes, npz_bytes
from common.paths import REPO
from sampling.seeds import SampleNoise

from .planning import Case, NearFree, compose, run_solver, solver_names

REFERENCE = REPO / "results" / "bench" / "solver_outputs.npz"
# float32 outputs are O(1): a reordering of the same arithmetic moves them by ~1e-6 (Adams-Bashforth
# steps in EDM sigma by ~1e-5); float64 ones by ~1e-14.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


def _wiggly(x, t):
    # For the output check: nonlinear and time-dependent, so a changed weight or history order shows.
    return torch.tanh(x) * (0.6 + 0.3 * math.cos(3.0 * t))


CHECK_SHAPE, CHECK_BATCH, CHECK_NFE = (3, 8, 8), 4, 12
# Beyond each config's defaults: the branches the fast paths rewrite (orders, variants, stochastic options).
CHECK_VARIANTS = [
    ("dpmpp", ("solver.order=3",)), ("dpmpp", ("solver.order=3", "solver.variant=exact")),
    ("dpmpp", ("solver.method=singlestep",)), ("dpmpp", ("solver.order=1",)),
    ("dpm_solver", ("solver.method=multistep",)), ("dpm_solver", ("solver.order=2",)),
    ("dpm_solver", ("solver.outer_grid=fine",)),
    ("unipc", ("solver.variant=bh2",)), ("unipc", ("solver.corrector=false",)), ("unipc", ("solver.order=2",)),
    ("deis", ("solver.basis=logrho",)), ("deis", ("solver.order=2",)),
    ("euler", ("solver.S_churn=10", "solver.S_tmax=10")), ("heun", ("solver.S_churn=10", "solver.S_tmax=10")), ("heun", ("solver.final_step=edm",)),
    ("pndm", ("solver.method=s_pndm",)), ("pndm", ("solver.method=f_pndm",)),
    ("ddim", ("solver.eta=1.0",)), ("ddpm", ("solver.variance=fixed_large",)), ("ipndm", ("solver.order=2",)),
    ("score_sde_pc", ("solver.predictor=euler_maruyama",)), ("time_shift", ("solver.base=ipndm",)),
    ("dpmpp_sde", ("solver.order=1",)), ("dpmpp", ("schedule=diffusers",)),
]


def check_variants() -> list[tuple[str, tuple]]:
    return [(n, ()) for n in solver_names()] + CHECK_VARIANTS


def variant_label(name: str, overrides: tuple) -> str:
    return name + (f"[{','.join(o.replace('solver.', '') for o in overrides)}]" if overrides else "")


def current_outputs(noise) -> dict[str, np.ndarray]:
    """Each variant's samples from fixed per-sample noise (seed 1), float32 and float64."""
    out = {}
    for name, overrides in check_variants():
        cfg = compose([f"solver={name}", "model=digits_unet", f"nfe={CHECK_NFE}", *overrides])
        case = Case.plan(variant_label(name, overrides), cfg, noise, CHECK_NFE)
        for dtype in (torch.float32, torch.float64):
            model = NearFree(noise, CHECK_SHAPE, fn=_wiggly)
            rng = SampleNoise(1, range(CHECK_BATCH), CHECK_SHAPE, dtype=dtype)
            x, _ = run_solver(case, model, float(noise.sigma(case.ts[0])) * rng.draw(), rng)
            out[f"{case.label}|{str(dtype).replace('torch.', '')}"] = x.numpy()
    return out


def compare_outputs(reference: dict, current: dict) -> list[dict]:
    """Per reference key: max abs difference (None when the output is missing or changed shape) and
    whether it is within the tolerance of its dtype."""
    rows = []
    for key in sorted(reference):
        ref, cur = np.asarray(reference[key]), current.get(key)
        diff = None if cur is None or np.shape(cur) != ref.shape else float(np.max(np.abs(np.asarray(cur) - ref)))
        tol = TOLERANCE[key.rsplit("|", 1)[1]]
        rows.append({"output": key, "max_abs_diff": diff, "tolerance": tol, "same": diff is not None and diff <= tol})
    return rows


def write_reference(noise, path=REFERENCE) -> list[str]:
    """Adds the outputs the reference lacks (a new solver or variant) and returns their keys; the entries
    already there stay as written, so an optimisation can never re-baseline what it is checked against."""
    old = load_reference(path) if path.exists() else {}
    new = {k: v for k, v in current_outputs(noise).items() if k not in old}
    atomic_write_bytes(path, npz_bytes({**old, **new}))
    return sorted(new)


def load_reference(path=REFERENCE) -> dict:
    with np.load(io.BytesIO(path.read_bytes())) as z:
        return {k: z[k] for k in z.files}
