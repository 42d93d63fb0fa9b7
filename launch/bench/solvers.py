"""Solver overhead per NFE against the in-place floor and against diffusers' scheduler.step loop.

The model is near-free (x0 prediction = x * 0.5), so what is timed is nfebench's own cost: the solver
loop, the NFE counter and the Denoiser adapter, called the way a run calls them (planning.run_solver
mirrors launch/run.py's batch loop). The floor is a hand-written in-place DPM-Solver++(2M) loop with
precomputed coefficients calling x * 0.5 directly; a solver that draws noise with its default options
is compared with the floor plus one batched randn per step. Every contender gets fresh inputs outside
the timed region; thread CPU time, one torch thread, contenders interleaved, medians of per-round ratios.

The part also reports outputs.py's check that the solvers' samples have not changed.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from sampling.seeds import SampleNoise

from .diffusers_loops import DIFFUSERS, DiffusersMatch, diffusers_draws, diffusers_loop, diffusers_nfe, \
    make_scheduler
from .outputs import CHECK_BATCH, CHECK_NFE, CHECK_SHAPE, CHECK_VARIANTS, REFERENCE, TOLERANCE, compare_outputs, \
    current_outputs, load_reference
from .ops import count_passes
from .planning import NFE, Case, NearFree, compose, draws_per_batch, is_stochastic, noise_schedule, \
    passes_per_batch, run_solver, solver_names
from .report import Goal, interleaved, median_ratio

SHAPES = {"64x3x32x32": (64, 3, 32, 32), "16x3x256x256": (16, 3, 256, 256)}
ROUNDS = {"64x3x32x32": 25, "16x3x256x256": 8}
QUICK_ROUNDS = {"64x3x32x32": 4, "16x3x256x256": 2}
FLOOR_GOAL, DIFFUSERS_GOAL = 1.5, 0.5


# --- the floor ---------------------------------------------------------------------------------------

def floor_coefficients(noise, ts) -> list[tuple[float, float, float]]:
    """DPM-Solver++(2M), data prediction, per step k-1 -> k (Lu et al. 2022b, Alg. 2):
    x_k = (sigma_k/sigma_{k-1}) x_{k-1} + alpha_k (1 - e^{-h_k}) D_k with h_k = lam_k - lam_{k-1},
    D_k = (1 + 1/(2 r_k)) m_{k-1} - 1/(2 r_k) m_{k-2}, r_k = h_{k-1}/h_k, and D_1 = m_0.
    Returns (a, b, c) with x_k = a x_{k-1} + b m_{k-1} + c m_{k-2}."""
    alpha, sigma, lam = (np.asarray(f(ts), dtype=np.float64) for f in (noise.alpha, noise.sigma, noise.lam))
    out = []
    for k in range(1, len(ts)):
        h = lam[k] - lam[k - 1]
        a, e = sigma[k] / sigma[k - 1], alpha[k] * -math.expm1(-h)
        if k == 1:
            out.append((float(a), float(e), 0.0))
        else:
            r = (lam[k - 1] - lam[k - 2]) / h
            out.append((float(a), float(e * (1 + 0.5 / r)), float(-e * 0.5 / r)))
    return out


def floor(x, coeffs, gen=None, noise_scale: float = 0.0):
    """The hand-written loop: one model output per step, everything else in place in x."""
    prev = None
    for a, b, c in coeffs:
        m = x * 0.5
        x.mul_(a).add_(m, alpha=b)
        if c:
            x.add_(prev, alpha=c)
        if gen is not None:  # the stochastic floor: one batched randn per step
            x.add_(torch.randn(x.shape, generator=gen, dtype=x.dtype), alpha=noise_scale)
        prev = m
    return x


# --- the timed contenders ----------------------------------------------------------------------------

def prep_floor(x_start, coeffs, stochastic: bool):
    def prepare():
        x, gen = x_start.clone(), (torch.Generator().manual_seed(0) if stochastic else None)
        return lambda: floor(x, coeffs, gen, 0.1)
    return prepare


def prep_nfebench(case: Case, model, x_start):
    def prepare():
        x = x_start.clone()
        rng = SampleNoise(0, range(len(x)), model.shape, dtype=x.dtype)  # per-batch set-up: the noise part
        return lambda: run_solver(case, model, x, rng)
    return prepare


def prep_diffusers(sched, match: DiffusersMatch, x_start):
    def prepare():
        x, gen = x_start.clone(), torch.Generator().manual_seed(0)
        sched.set_timesteps(match.steps)  # resets the scheduler's state; timed on its own below
        return lambda: diffusers_loop(sched, match, x, gen)
    return prepare


def prep_set_timesteps(sched, match: DiffusersMatch):
    def prepare():
        return lambda: sched.set_timesteps(match.steps)
    return prepare


# The near-free model (x0 = x / 2) is no denoiser: DPM-Solver-v3's statistics estimated on it overflow. Its
# loop is timed with l = 1, s = 0, b = 0 instead, the same per-dimension arithmetic on finite numbers (the
# output check still runs v3 with the EMS its estimator computes on the bench's model).
TIMED_WITH = {"dpm_solver_v3": ("solver.degenerated=true",)}


def measure_shape(shape, rounds: int, names: list[str], noise) -> dict:
    torch.manual_seed(0)
    dims = shape[1:]
    model, eps_model = NearFree(noise, dims), NearFree(noise, dims, prediction="eps")
    cases = {n: Case.plan(n, compose([f"solver={n}", "model=digits_unet", f"nfe={NFE}", *TIMED_WITH.get(n, ())]),
                          noise, NFE) for n in names}
    floor_case = cases.get("dpmpp") or Case.plan("dpmpp", compose(["solver=dpmpp", "model=digits_unet"]), noise, NFE)
    coeffs = floor_coefficients(noise, floor_case.ts)
    x_start = float(noise.sigma(floor_case.ts[0])) * torch.randn(shape)
    contenders = {"floor": prep_floor(x_start, coeffs, False), "floor+randn": prep_floor(x_start, coeffs, True)}
    floor_passes = floor_ops(x_start, coeffs)
    rows = {}
    for n, case in cases.items():
        passes, nfe = passes_per_batch(case, model, x_start)
        rows[n] = {"nfe": nfe, "stochastic": is_stochastic(case, model), "options": case.opts,
                   "ops": passes.total, "ops_by_aten_op": dict(sorted(passes.passes.items())),
                   "host_reads": sum(passes.host_reads.values()), "host_reads_by_aten_op": dict(passes.host_reads)}
        contenders[f"nfebench {n}"] = prep_nfebench(case, model, x_start)
        if n in DIFFUSERS:
            match = DIFFUSERS[n]
            sched = make_scheduler(match)
            rows[n]["diffusers_nfe"] = diffusers_nfe(sched, match)
            if rows[n]["stochastic"]:
                rows[n]["draws"] = draws_per_batch(case, model)
                rows[n]["diffusers_draws"] = diffusers_draws(sched, match, x_start[:2])
            contenders[f"diffusers {n}"] = prep_diffusers(sched, match, x_start)
            contenders[f"diffusers {n} set_timesteps"] = prep_set_timesteps(sched, match)
            if match.prediction == "epsilon":
                contenders[f"nfebench {n} (eps model)"] = prep_nfebench(case, eps_model, x_start)
    times = interleaved(contenders, rounds)
    # one batched randn, per round: what the floor's noise adds, per draw
    randn = [(a - b) / len(coeffs) for a, b in zip(times["floor+randn"], times["floor"])]
    for n, row in rows.items():
        ref = "floor+randn" if row["stochastic"] else "floor"
        row["floor"] = ref
        row["ms_per_nfe"] = 1e3 * float(np.median(times[f"nfebench {n}"])) / row["nfe"]
        row["vs_floor"] = median_ratio(times[f"nfebench {n}"], times[ref], row["nfe"], len(coeffs))
        row["ops_per_nfe"] = row["ops"] / row["nfe"]
        row["op_bound"] = row["ops_per_nfe"] / (floor_passes[ref] / len(coeffs))
        row["vs_op_bound"] = row["vs_floor"] / row["op_bound"]
        if n in DIFFUSERS:
            mine = f"nfebench {n} (eps model)" if f"nfebench {n} (eps model)" in times else f"nfebench {n}"
            row["diffusers_ms_per_nfe"] = 1e3 * float(np.median(times[f"diffusers {n}"])) / row["diffusers_nfe"]
            loop, setup = times[f"diffusers {n}"], times[f"diffusers {n} set_timesteps"]
            row["diffusers_set_timesteps_ms"] = 1e3 * float(np.median(setup))
            row["vs_diffusers"] = median_ratio(times[mine], loop, row["nfe"], row["diffusers_nfe"])
            row["vs_diffusers_with_set_timesteps"] = median_ratio(times[mine], [a + b for a, b in zip(loop, setup)],
                                                                  row["nfe"], row["diffusers_nfe"])
            if "draws" in row:
                without_noise(row, times[mine], loop, randn)
    floors = {k: 1e3 * float(np.median(times[k])) / len(coeffs) for k in ("floor", "floor+randn")}
    return {"rounds": rounds, "floor_ms_per_nfe": floors, "randn_ms": 1e3 * float(np.median(randn)),
            "floor_steps": len(coeffs), "floor_ops": floor_passes,
            "floor_ops_per_step": {k: v / len(coeffs) for k, v in floor_passes.items()},
            "solvers": rows}


def floor_ops(x_start, coeffs) -> dict[str, int]:
    """Full-batch passes of the floor and of floor+randn (its randn counted apart, as nfebench's draws are
    hidden), counted as the solvers' are (ops.py)."""
    out = {}
    for key, gen in (("floor", None), ("floor+randn", torch.Generator().manual_seed(0))):
        x = x_start.clone()
        out[key] = count_passes(lambda _: floor(x, coeffs, gen, 0.1), x.numel()).total
    return out


def without_noise(row: dict, mine: list[float], theirs: list[float], randn: list[float]) -> None:
    """A stochastic method's comparison with diffusers apart from its Gaussian draws, which both sides make
    with torch's generator (nfebench per sample, for batch invariance; diffusers one batched randn).
    Per round, each side's time less one batched randn per draw it makes (counted, not assumed): what is
    left is the solver's own work, plus on nfebench's side what its per-sample streams cost beyond a
    batched randn. ``noise_bound`` is the ratio nfebench would have if all but its draws were free."""
    n, d = row["nfe"], row["diffusers_nfe"]
    row["vs_diffusers_without_noise"] = median_ratio([t - row["draws"] * r for t, r in zip(mine, randn)],
                                                     [t - row["diffusers_draws"] * r for t, r in zip(theirs, randn)],
                                                     n, d)
    row["noise_bound"] = median_ratio([row["draws"] * r for r in randn], theirs, n, d)


# --- the part ----------------------------------------------------------------------------------------

def _fmt(v, spec=".2f", suffix="x"):
    return "–" if v is None else f"{v:{spec}}{suffix}"


def goals(shapes: dict, check: list[dict]) -> list[Goal]:
    out = []
    for label, res in shapes.items():
        rows = res["solvers"].values()
        out.append(Goal(f"every solver <= {FLOOR_GOAL}x the floor per NFE at {label} (worst)",
                        max(r["vs_floor"] for r in rows), FLOOR_GOAL))
        shared = [r for r in rows if "vs_diffusers" in r]
        for kind, key, which in (("deterministic", "vs_diffusers", lambda r: not r["stochastic"]),
                                 ("stochastic", "vs_diffusers", lambda r: r["stochastic"]),
                                 ("stochastic", "vs_diffusers_without_noise", lambda r: r["stochastic"])):
            vals = [r[key] for r in shared if which(r) and key in r]
            extra = ", Gaussian draws taken out of both sides" if key.endswith("without_noise") else \
                (", noise included" if kind == "stochastic" else "")
            out.append(Goal(f"every shared {kind} solver <= {DIFFUSERS_GOAL}x diffusers' scheduler.step loop per NFE "
                            f"at {label}{extra} (worst)", max(vals) if vals else None, DIFFUSERS_GOAL,
                            why_not_measured="diffusers missing"))
    out.append(Goal("no host sync inside a batch, on a GPU (proxy on this CPU: ops that read a value on the host, "
                    "counted in each solver's probe run; worst per batch)",
                    max((r["host_reads"] for res in shapes.values() for r in res["solvers"].values()), default=None),
                    0, unit="",
                    why_not_measured="no solver measured"))
    worst = max((r["max_abs_diff"] / r["tolerance"] if r["max_abs_diff"] is not None else math.inf) for r in check) \
        if check else None
    out.append(Goal("fast paths give the same samples: worst max|diff| / tolerance over solver outputs",
                    worst, 1.0, unit="", why_not_measured="no reference npz"))
    return out


def over_op_bound(shapes: dict) -> list[str]:
    """The goal table's footnote (not a goal of its own): which solvers the floor goal is out of reach for
    without fewer passes over the tensors, as counted."""
    lines = [f"Op bound and the floor goal, as counted (`ops / NFE` under Per solver): if every full-tensor pass "
             f"costs what a floor pass costs, a solver whose op bound (passes per NFE over the floor's) exceeds "
             f"{FLOOR_GOAL}x stays above {FLOOR_GOAL}x the floor even with everything but its passes free, so the "
             f"floor goal cannot be met for it without fewer passes over the tensors. Configs that draw noise are "
             f"held to floor+randn, whose time the draws dominate: an op bound above {FLOOR_GOAL}x does not rule "
             f"the goal out for them, and they are listed apart. Fusing a step's passes into one kernel reads the "
             f"same tensors: fusion.md measures whether that helps (`python -m launch.bench fusion`)."]
    for label, res in shapes.items():
        over = sorted(((n, r) for n, r in res["solvers"].items() if r["op_bound"] > FLOOR_GOAL),
                      key=lambda t: -t[1]["op_bound"])
        det = [f"{n} {r['op_bound']:.2f}x" for n, r in over if not r["stochastic"]]
        sto = [f"{n} {r['op_bound']:.2f}x" for n, r in over if r["stochastic"]]
        lines.append(f"At {label}, op bound above {FLOOR_GOAL}x (floor goal out of reach at these passes): "
                     + (", ".join(det) or "none") + (f"; drawing noise: {', '.join(sto)}" if sto else "") + ".")
    return [lines[0], "", *[f"- {line}" for line in lines[1:]], ""]


def body(shapes: dict, check: list[dict]) -> list[str]:
    lines = [*over_op_bound(shapes), "## Per solver", "",
             f"Near-free model (x0 prediction = x * 0.5) behind nfebench's Denoiser adapter and NFE counter, "
             f"nfe={NFE}, each config with its defaults (configs/solver/*.yaml, its default grid). `/ floor`: "
             "time per NFE over the floor's time per NFE (floor+randn for configs that draw noise by default). "
             "`/ diffusers`: time per NFE over diffusers' step loop's (scale_model_input + model + scheduler.step "
             "per step) for the same method on the same tensors; `/ with set_timesteps` adds the scheduler's "
             "set_timesteps, which a diffusers pipeline pays per call (per batch), as nfebench's solvers pay their "
             "coefficients inside the timed call. Medians of per-round ratios.", "",
             "`ops / NFE`: aten ops that read or write a whole batch-sized tensor (a pass over the batch), per NFE, "
             "counted in one untimed run of the timed call on the timed inputs (launch/bench/ops.py, "
             "TorchDispatchMode) after an uncounted warm-up run, the near-free model's x * 0.5 included (as in the "
             "floor). Not counted: views and metadata (view, reshape's alias, as_strided, detach, alias, expand, "
             "empty, resize_), ops on smaller tensors (per-sample slices, coefficient arrays), and the Gaussian "
             "draws (all random ops, and everything inside the noise source's draws). `op bound`: ops / NFE over "
             "the floor's passes per step (floor+randn's for configs that draw noise, its randn not counted): the "
             "ratio to the floor the solver would have if every full-tensor pass cost what a floor pass costs and "
             "nothing else cost anything. `/ op bound`: the measured `/ floor` over the op bound, 1x meaning the "
             "implementation costs exactly its passes, above 1x what it costs beyond them (Python, small tensors, "
             "and passes that move more data than the floor's, e.g. a 3-operand addcmul). For configs that draw "
             "noise the measured ratio includes both sides' draws (see below), which pull it toward 1x, so their "
             "`/ op bound` says little. Per-op counts are in solvers.json (`ops_by_aten_op`). `host reads`: ops in "
             "the same run that read a tensor's value on the host (`.item()`, `float`/`bool` of a tensor, nonzero, "
             "unique, a boolean-mask index; ops.reads_on_host), each a wait for the device on a GPU, noise draws "
             "included.", "",
             "Stochastic methods: both sides draw Gaussian noise of the batch's shape with torch's generator, "
             "diffusers one batched `torch.randn` per draw, nfebench one stream per sample (batch-invariant "
             "samples; see noise.md), and one draw costs "
             + " and ".join(f"{r['randn_ms'] / r['floor_ms_per_nfe']['floor']:.1f}x a floor step at {label}"
                            for label, r in shapes.items() if "randn_ms" in r)
             + ", so the draws, not the solvers, set these ratios. `draws` counts each side's draws per batch "
             "(counted in an untimed run, not assumed). `noise bound` is the ratio nfebench would have if "
             "everything but its draws were free "
             "(its draws at one batched randn each): the lowest any implementation that draws this noise can "
             "reach, so a bound above the 0.5x goal means the goal cannot be met with noise included. "
             "`/ diffusers w/o noise` takes one batched randn per counted draw out of each side, per round "
             "(the randn time is the floor+randn contender's minus the floor's): nfebench keeps what its "
             "per-sample streams cost beyond a batched randn.", ""]
    for label, res in shapes.items():
        fl = res["floor_ms_per_nfe"]
        lines += [f"### {label} float32 ({res['rounds']} rounds)", "",
                  f"Floor: {fl['floor']:.3f} ms per NFE; floor + one batched randn per step: "
                  f"{fl['floor+randn']:.3f} ms "
                  f"(one batched randn: {res.get('randn_ms', float('nan')):.3f} ms).",
                  "", f"Floor passes over the batch: {res['floor_ops']['floor']} in {res['floor_steps']} steps "
                  f"({res['floor_ops_per_step']['floor']:.1f} per step; its first step has no m_(k-2) term); "
                  f"floor+randn {res['floor_ops']['floor+randn']} ({res['floor_ops_per_step']['floor+randn']:.1f} "
                  "per step, the randn not counted).",
                  "", "| solver | NFE | stochastic | ms / NFE | / floor | ops / NFE | op bound | / op bound | "
                  "host reads | diffusers ms / NFE (NFE) | "
                  "set_timesteps ms | / diffusers | / with set_timesteps | draws (diffusers) | noise bound | "
                  "/ diffusers w/o noise |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, r in res["solvers"].items():
            d = f"{r['diffusers_ms_per_nfe']:.3f} ({r['diffusers_nfe']})" if "vs_diffusers" in r else "–"
            draws = f"{r['draws']} ({r['diffusers_draws']})" if "draws" in r else "–"
            lines.append(f"| {n} | {r['nfe']} | {'yes' if r['stochastic'] else 'no'} | {r['ms_per_nfe']:.3f} | "
                         f"{_fmt(r['vs_floor'])} | {r['ops_per_nfe']:.1f} | {_fmt(r['op_bound'])} | "
                         f"{_fmt(r['vs_op_bound'])} | {r['host_reads']} | {d} | "
                         f"{_fmt(r.get('diffusers_set_timesteps_ms'), '.3f', '')} | "
                         f"{_fmt(r.get('vs_diffusers'))} | {_fmt(r.get('vs_diffusers_with_set_timesteps'))} | "
                         f"{draws} | {_fmt(r.get('noise_bound'))} | {_fmt(r.get('vs_diffusers_without_noise'))} |")
        vs = [r["vs_floor"] for r in res["solvers"].values()]
        vd = [r["vs_diffusers"] for r in res["solvers"].values() if "vs_diffusers" in r]
        lines += ["", f"Median over {len(vs)} solvers: {float(np.median(vs)):.2f}x the floor; over the {len(vd)} "
                  f"shared with diffusers: {float(np.median(vd)):.2f}x its step loop.", ""]
    lines += ["### How each diffusers scheduler was configured", "",
              "Betas: diffusers' defaults (linear 1e-4..0.02, 1000 steps) = the near-free model's schedule "
              "(vp_discrete, as digits_unet). The near-free output is declared with `prediction_type`; "
              "num_inference_steps chosen so that the loop makes ~NFE model calls.", ""]
    for n, m in DIFFUSERS.items():
        args = ", ".join(f"{k}={v!r}" for k, v in {**m.kwargs, "prediction_type": m.prediction}.items())
        step = ", ".join(f"{k}={'torch.Generator' if k == 'generator' else v!r}" for k, v in m.step_kwargs)
        lines.append(f"- {n}: `{m.scheduler}({args})`, num_inference_steps={m.steps}"
                     + (f", step({step})" if step else "") + (f"; {m.note}" if m.note else ""))
    lines += ["", "## Same samples as before", "",
              f"Outputs of every config and {len(CHECK_VARIANTS)} option variants on {CHECK_BATCH}x"
              f"{'x'.join(map(str, CHECK_SHAPE))} inputs (per-sample noise, seed 1; a nonlinear near-free model), "
              f"nfe={CHECK_NFE}, against results/bench/solver_outputs.npz made from main's code before the fast paths.",
              ""]
    bad = [r for r in check if not r["same"]]
    worst = {d: max((r["max_abs_diff"] or 0.0 for r in check if r["output"].endswith(d)), default=None)
             for d in TOLERANCE}
    lines.append("Max abs diff over all outputs: " + ", ".join(f"{d} {_fmt(v, '.2e', '')} (tolerance {TOLERANCE[d]:g})"
                                                               for d, v in worst.items()) + ".")
    lines += ["", f"Changed or missing: {', '.join(r['output'] for r in bad) if bad else 'none'}.", ""]
    return lines


def run(quick: bool = False, out=None, names=None) -> list[Goal]:
    from .report import write

    torch.set_num_threads(1)
    noise = noise_schedule()
    names = names or solver_names()
    rounds = QUICK_ROUNDS if quick else ROUNDS
    check = compare_outputs(load_reference(), current_outputs(noise)) if REFERENCE.exists() else []
    for r in check:
        if not r["same"]:
            print(f"solvers: output changed: {r['output']} max abs diff {r['max_abs_diff']}", flush=True)
    shapes = {}
    for label, shape in SHAPES.items():
        t0 = time.perf_counter()
        shapes[label] = measure_shape(shape, rounds[label], names, noise)
        shapes[label]["wall_s"] = round(time.perf_counter() - t0, 1)
        for n, r in shapes[label]["solvers"].items():
            print(f"solvers {label}: {n}: {r['vs_floor']:.2f}x floor, {r['ops_per_nfe']:.1f} ops / NFE "
                  f"(op bound {r['op_bound']:.2f}x), {_fmt(r.get('vs_diffusers'))} diffusers",
                  flush=True)
    gs = goals(shapes, check)
    settings = {"nfe": NFE, "dtype": "float32", "torch threads": 1, "clock": "thread CPU time",
                "rounds": {k: rounds[k] for k in SHAPES}, "quick": quick}
    path = write("solvers", "Solver overhead per NFE: floor and diffusers", settings, gs, body(shapes, check),
                 {"shapes": shapes, "output_check": check}, out)
    print(f"wrote {path}", flush=True)
    return gs
