"""Would fused kernels meet the floor goal? iPNDM order 4 (ipndm's default, whose passes per NFE put it above
the floor goal) with all of each step but the model compiled by torch.compile (inductor) into one kernel,
against the floor and against nfebench's ipndm, in the same rounds.

The fused loop calls the near-free model directly, as the floor does, without nfebench's NFE counter and
Denoiser adapter: it gets every advantage the floor has, and one kernel per step where nfebench makes one
pass per term. It must give nfebench's ipndm samples (checked before timing), so it is the same method.
Compiling needs a C++ compiler; without one the part says so and measures nothing.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from sampling.solvers.ipndm import _plan as ipndm_plan

from .planning import NFE, Case, NearFree, compose, noise_schedule, run_solver
from .report import Goal, interleaved, median_ratio, write
from .solvers import FLOOR_GOAL, SHAPES, floor_coefficients, prep_floor, prep_nfebench

ROUNDS = {"64x3x32x32": 25, "16x3x256x256": 8}
QUICK_ROUNDS = {"64x3x32x32": 4, "16x3x256x256": 2}
ORDER = 4
TOLERANCE = 1e-4  # float32: the fused kernel rounds in another order than the separate passes


def ipndm_step(x, d, c, *past):
    """One iPNDM step but its model call, as arithmetic a compiler can fuse: sigma eps_k = x - alpha D and
    x_{k+1} = keep x + sum_j w_j sigma eps_{k-j}, with c = (alpha, keep, w_0, w_1, ...) as ipndm's plan
    gives them (past: the older sigma eps, newest first)."""
    e = x - c[0] * d
    out = c[1] * x + c[2] * e
    for j, p in enumerate(past):
        out = out + c[3 + j] * p
    return out, e


def step_coefficients(noise, ts, dtype=torch.float32) -> list[torch.Tensor]:
    """ipndm's own per-step weights (sampling/solvers/ipndm.py), one small tensor per step, so that a
    compiled step is specialised on the number of past terms only, not on the weights' values."""
    return [torch.tensor([alpha, keep, *w], dtype=dtype) for _, alpha, _, keep, w in ipndm_plan(noise, ts, ORDER)]


def fused_loop(step, coeffs, x):
    """The hand-written loop around ``step``: the near-free model x * 0.5 called directly, as in the floor."""
    past = []
    for c in coeffs:
        x, e = step(x, x * 0.5, c, *past[: len(c) - 3])
        past = [e, *past][: ORDER - 1]
    return x


def prep_fused(step, coeffs, x_start):
    def prepare():
        x = x_start.clone()
        return lambda: fused_loop(step, coeffs, x)
    return prepare


def compiled_step():
    """ipndm_step compiled for fixed shapes (measure_shape times the first call, which compiles)."""
    import torch._dynamo

    # one graph per (shape, number of past terms): 2 shapes x 4 orders, above dynamo's default limit of 8
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
    return torch.compile(ipndm_step, dynamic=False, fullgraph=True)


class SamplesDiffer(AssertionError):
    """The fused loop is not the method it stands for: a bug, never a reason to skip the part."""


def check_same_samples(step, case: Case, model, coeffs, x_start) -> float:
    """Max |fused - nfebench| / max |nfebench| over one batch; the part stops if it is above TOLERANCE."""
    mine = fused_loop(step, coeffs, x_start.clone())
    ref = run_solver(case, model, x_start.clone(), None)[0]
    rel = float((mine - ref).abs().max() / ref.abs().max())
    if not rel <= TOLERANCE:
        raise SamplesDiffer(f"the fused iPNDM loop is not nfebench's ipndm: max rel diff {rel:.3g} > {TOLERANCE}")
    return rel


def measure_shape(shape, rounds: int, step, noise) -> dict:
    torch.manual_seed(0)
    model = NearFree(noise, shape[1:])
    case = Case.plan("ipndm", compose(["solver=ipndm", "model=digits_unet", f"nfe={NFE}", f"solver.order={ORDER}"]),
                     noise, NFE)
    floor_case = Case.plan("dpmpp", compose(["solver=dpmpp", "model=digits_unet"]), noise, NFE)
    floor = floor_coefficients(noise, floor_case.ts)
    coeffs = step_coefficients(noise, case.ts)
    x_start = float(noise.sigma(case.ts[0])) * torch.randn(shape)
    t0 = time.perf_counter()
    rel = check_same_samples(step, case, model, coeffs, x_start)  # the first call compiles
    compile_s = time.perf_counter() - t0
    times = interleaved({"floor": prep_floor(x_start, floor, False), "nfebench ipndm": prep_nfebench(case, model, x_start),
                         "fused ipndm": prep_fused(step, coeffs, x_start)}, rounds)
    steps = len(coeffs)
    return {"rounds": rounds, "steps": steps, "compile_s": compile_s, "max_rel_diff": rel,
            "ms_per_nfe": {k: 1e3 * float(np.median(v)) / (len(floor) if k == "floor" else steps)
                           for k, v in times.items()},
            "fused_vs_floor": median_ratio(times["fused ipndm"], times["floor"], steps, len(floor)),
            "nfebench_vs_floor": median_ratio(times["nfebench ipndm"], times["floor"], steps, len(floor)),
            "fused_vs_nfebench": median_ratio(times["fused ipndm"], times["nfebench ipndm"])}


def report(res: dict) -> list[str]:
    lines = ["## iPNDM-4, fused and not", "",
             f"`solver=ipndm solver.order={ORDER} nfe={NFE}` on its default grid (karras), float32 64x3x32x32 and "
             "16x3x256x256, the near-free model of the solvers part; thread CPU time, one torch thread, contenders interleaved, medians of per-round ratios. `compile s`: wall seconds of the first "
             "call, which compiles (inductor's on-disk cache makes a second bench run faster).", "",
             "| shape | floor ms / NFE | nfebench ipndm ms / NFE | fused ms / NFE | nfebench / floor | fused / floor "
             "| fused / nfebench | compile s | max rel diff |", "|---|---|---|---|---|---|---|---|---|"]
    for label, r in res.items():
        ms = r["ms_per_nfe"]
        lines.append(f"| {label} | {ms['floor']:.3f} | {ms['nfebench ipndm']:.3f} | {ms['fused ipndm']:.3f} | "
                     f"{r['nfebench_vs_floor']:.2f}x | {r['fused_vs_floor']:.2f}x | {r['fused_vs_nfebench']:.2f}x | "
                     f"{r['compile_s']:.1f} | {r['max_rel_diff']:.1e} |")
    lines += ["", "A fused step reads every term it combines, as the separate passes do; what it saves is the writes "
              "and re-reads of the running sum. Where `fused / floor` stays above the goal, fewer kernels do not "
              "bring this method to the floor on this machine: the bytes each step must read set its cost.", ""]
    return lines


def run(quick: bool = False, out=None) -> list[Goal]:
    torch.set_num_threads(1)
    rounds = QUICK_ROUNDS if quick else ROUNDS
    settings = {"solver": f"ipndm order {ORDER}", "nfe": NFE, "dtype": "float32", "torch threads": 1,
                "clock": "thread CPU time", "rounds": rounds, "quick": quick}
    noise, step = noise_schedule(), compiled_step()
    try:
        res = {label: measure_shape(shape, rounds[label], step, noise) for label, shape in SHAPES.items()}
    except SamplesDiffer:
        raise
    except Exception as err:  # torch.compile's errors have no common base; e.g. no C++ compiler here
        why = f"torch.compile failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
        goals = [Goal(f"ipndm with fused steps <= {FLOOR_GOAL}x the floor per NFE at {label}", None, FLOOR_GOAL,
                      why_not_measured=why) for label in SHAPES]
        write("fusion", "Fused steps against the floor", settings, goals, [why], {}, out)
        print(f"fusion: not measured ({why})", flush=True)
        return goals
    goals = [Goal(f"ipndm with fused steps <= {FLOOR_GOAL}x the floor per NFE at {label} (would fusion meet the "
                  "floor goal for it?)", r["fused_vs_floor"], FLOOR_GOAL) for label, r in res.items()]
    path = write("fusion", "Fused steps against the floor", settings, goals, report(res), {"shapes": res}, out)
    for label, r in res.items():
        print(f"fusion {label}: fused ipndm {r['fused_vs_floor']:.2f}x the floor, nfebench ipndm "
              f"{r['nfebench_vs_floor']:.2f}x; compile {r['compile_s']:.1f} s", flush=True)
    print(f"wrote {path}", flush=True)
    return goals
