"""Solver overhead per NFE against the in-place floor and against diffusers' scheduler.step loop.

The model is near-free (x0 prediction = x * 0.5), so what is timed is nfebench's own cost: the solver
loop, the NFE counter and the Denoiser adapter, called the way a run calls them (run_solver below
mirrors launch/run.py's batch loop). The floor is a hand-written in-place DPM-Solver++(2M) loop with
precomputed coefficients calling x * 0.5 directly; a solver that draws noise with its default options
is compared with the floor plus one batched randn per step. Every contender gets fresh inputs outside
the timed region; thread CPU time, one torch thread, contenders interleaved, medians of per-round ratios.

The same code checks that the solvers' samples have not changed: results/bench/solver_outputs.npz holds
every solver's output on small fixed inputs, made from main's code (--write-reference), and each bench
run reports the max abs difference against it.
"""
from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from common.files import atomic_write_bytes, npz_bytes
from common.paths import REPO
from models.counter import CountedDenoiser
from models.denoiser import Denoiser
from sampling.registry import get_solver
from sampling.schedules import make_noise_schedule
from sampling.seeds import SampleNoise
from sampling.timesteps import final_step, make_grid

from .report import Goal, interleaved, median_ratio

NFE = 10
SHAPES = {"64x3x32x32": (64, 3, 32, 32), "16x3x256x256": (16, 3, 256, 256)}
ROUNDS = {"64x3x32x32": 25, "16x3x256x256": 8}
QUICK_ROUNDS = {"64x3x32x32": 4, "16x3x256x256": 2}
REFERENCE = REPO / "results" / "bench" / "solver_outputs.npz"
FLOOR_GOAL, DIFFUSERS_GOAL = 1.5, 0.5
# The fast-path check: float32 outputs are O(1), so a reordering of the same arithmetic moves them by ~1e-6.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


def solver_names() -> list[str]:
    return sorted(p.stem for p in (REPO / "configs" / "solver").glob("*.yaml"))


def compose(overrides: list[str]) -> dict:
    """The resolved run config, as `python launch.py <overrides>` would see it."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)


class NearFree(Denoiser):
    """A model that costs one elementwise op: nfebench's wrapping of it is all that is left to time."""

    def __init__(self, noise, shape, prediction="x0", fn=None):
        self.noise, self.shape, self.prediction = noise, tuple(shape), prediction
        self.fn = fn or (lambda x, t: x * 0.5)

    def predict(self, x, t, cond=None):
        return self.fn(x, t)


def _wiggly(x, t):
    # For the output check: nonlinear and time-dependent, so a changed weight or history order shows.
    return torch.tanh(x) * (0.6 + 0.3 * math.cos(3.0 * t))


@dataclass
class Case:
    """One solver config planned for one model: what run_solver needs."""
    label: str
    spec: object
    opts: dict
    ts: np.ndarray
    final: bool
    nfe: int

    @classmethod
    def plan(cls, label: str, cfg: dict, noise, nfe: int) -> "Case":
        opts = dict(cfg["solver"])
        spec = get_solver(opts.pop("name"))
        grid = dict(cfg["schedule"])
        final = bool(cfg.get("denoise_to_zero") or final_step(grid))
        grid_name = grid.pop("name")
        steps = spec.steps(nfe - int(final), **opts)
        return cls(label, spec, opts, make_grid(noise, steps, grid_name, **grid), final, nfe)


def run_solver(case: Case, model, x_start, rng):
    """One batch as launch/run.py samples it: the solver and its final x0 step, every call counted."""
    counter = CountedDenoiser(model, budget=case.nfe, cond=None)
    with torch.no_grad():
        x = case.spec.fn(counter, x_start, case.ts, model.noise, rng, **case.opts)
        if case.final:
            t = float(case.ts[-1])
            x = case.spec.final(counter, x, t, **case.opts) if case.spec.final else counter(x, t)
    return x, counter


def noise_schedule():
    # digits_unet's: DDPM's linear betas over 1000 steps, the schedule diffusers' schedulers default to
    return make_noise_schedule(**dict(compose(["model=digits_unet"])["model"]["noise_schedule"]))


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


# --- diffusers ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DiffusersMatch:
    """diffusers' scheduler for the same method: class, constructor arguments (besides the betas,
    which are diffusers' defaults = the near-free model's schedule), num_inference_steps for ~NFE
    model calls, and the prediction_type the near-free output is declared as."""
    scheduler: str
    kwargs: dict
    steps: int
    prediction: str = "sample"
    step_kwargs: tuple = ()
    note: str = ""


DIFFUSERS = {
    "ddim": DiffusersMatch("DDIMScheduler", {}, NFE, step_kwargs=(("eta", 0.0),)),
    "ddpm": DiffusersMatch("DDPMScheduler", {"variance_type": "fixed_small"}, NFE, step_kwargs=(("generator", None),)),
    "dpmpp": DiffusersMatch("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, NFE),
    "dpm_solver": DiffusersMatch("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver", "solver_order": 3,
                                                                 "final_sigmas_type": "sigma_min"}, NFE,
                                 note="diffusers' eps-form DPM-Solver takes no final_sigmas_type='zero'"),
    "dpmpp_sde": DiffusersMatch("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
                                NFE, step_kwargs=(("generator", None),)),
    "unipc": DiffusersMatch("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1", "predict_x0": True},
                            NFE),
    "deis": DiffusersMatch("DEISMultistepScheduler", {"solver_order": 3}, NFE,
                           note="diffusers' DEIS is the log-rho basis; nfebench's default is the paper's t basis"),
    "euler": DiffusersMatch("EulerDiscreteScheduler", {"use_karras_sigmas": True}, NFE),
    "heun": DiffusersMatch("HeunDiscreteScheduler", {"use_karras_sigmas": True}, NFE // 2),
    "pndm": DiffusersMatch("PNDMScheduler", {"skip_prk_steps": True}, NFE - 1, prediction="epsilon",
                           note="PNDMScheduler takes no x0 prediction: both sides read x * 0.5 as eps here"),
}


def make_scheduler(match: DiffusersMatch):
    import warnings

    import diffusers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # algorithm_type='dpmsolver' is deprecated but runs
        return getattr(diffusers, match.scheduler)(prediction_type=match.prediction, **match.kwargs)


def diffusers_loop(sched, match: DiffusersMatch, x, gen):
    """A pipeline's denoising loop after set_timesteps: scale_model_input, the model, scheduler.step."""
    kw = {k: (gen if k == "generator" else v) for k, v in match.step_kwargs}
    for t in sched.timesteps:
        out = sched.scale_model_input(x, t) * 0.5
        x = sched.step(out, t, x, return_dict=False, **kw)[0]
    return x


def diffusers_nfe(sched, match: DiffusersMatch) -> int:
    sched.set_timesteps(match.steps)
    return len(sched.timesteps)


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


def is_stochastic(case: Case, model) -> bool:
    """Whether this config draws per-step noise (ddim/euler/heun do only when asked): an untimed probe,
    the same inputs with two different noise streams."""
    x = torch.randn(2, *model.shape, generator=torch.Generator().manual_seed(0))
    a, b = (run_solver(case, model, x.clone(), SampleNoise(seed, range(2), model.shape, dtype=x.dtype))[0]
            for seed in (0, 1))
    return not torch.equal(a, b)


def measure_shape(shape, rounds: int, names: list[str], noise) -> dict:
    torch.manual_seed(0)
    batch, dims = shape[0], shape[1:]
    model, eps_model = NearFree(noise, dims), NearFree(noise, dims, prediction="eps")
    cases = {n: Case.plan(n, compose([f"solver={n}", "model=digits_unet", f"nfe={NFE}"]), noise, NFE) for n in names}
    floor_case = cases.get("dpmpp") or Case.plan("dpmpp", compose(["solver=dpmpp", "model=digits_unet"]), noise, NFE)
    coeffs = floor_coefficients(noise, floor_case.ts)
    x_start = float(noise.sigma(floor_case.ts[0])) * torch.randn(shape)
    contenders = {"floor": prep_floor(x_start, coeffs, False), "floor+randn": prep_floor(x_start, coeffs, True)}
    rows = {}
    for n, case in cases.items():
        nfe = run_solver(case, model, x_start[:2].clone(), SampleNoise(0, range(2), dims, dtype=torch.float32))[1].count
        rows[n] = {"nfe": nfe, "stochastic": is_stochastic(case, model), "options": case.opts}
        contenders[f"nfebench {n}"] = prep_nfebench(case, model, x_start)
        if n in DIFFUSERS:
            match = DIFFUSERS[n]
            sched = make_scheduler(match)
            rows[n]["diffusers_nfe"] = diffusers_nfe(sched, match)
            contenders[f"diffusers {n}"] = prep_diffusers(sched, match, x_start)
            contenders[f"diffusers {n} set_timesteps"] = prep_set_timesteps(sched, match)
            if match.prediction == "epsilon":
                contenders[f"nfebench {n} (eps model)"] = prep_nfebench(case, eps_model, x_start)
    times = interleaved(contenders, rounds)
    for n, row in rows.items():
        ref = "floor+randn" if row["stochastic"] else "floor"
        row["floor"] = ref
        row["ms_per_nfe"] = 1e3 * float(np.median(times[f"nfebench {n}"])) / row["nfe"]
        row["vs_floor"] = median_ratio(times[f"nfebench {n}"], times[ref], row["nfe"], len(coeffs))
        if n in DIFFUSERS:
            mine = f"nfebench {n} (eps model)" if f"nfebench {n} (eps model)" in times else f"nfebench {n}"
            row["diffusers_ms_per_nfe"] = 1e3 * float(np.median(times[f"diffusers {n}"])) / row["diffusers_nfe"]
            loop, setup = times[f"diffusers {n}"], times[f"diffusers {n} set_timesteps"]
            row["diffusers_set_timesteps_ms"] = 1e3 * float(np.median(setup))
            row["vs_diffusers"] = median_ratio(times[mine], loop, row["nfe"], row["diffusers_nfe"])
            row["vs_diffusers_with_set_timesteps"] = median_ratio(times[mine], [a + b for a, b in zip(loop, setup)],
                                                                  row["nfe"], row["diffusers_nfe"])
    floors = {k: 1e3 * float(np.median(times[k])) / len(coeffs) for k in ("floor", "floor+randn")}
    return {"rounds": rounds, "floor_ms_per_nfe": floors, "solvers": rows}


# --- the same samples as before ----------------------------------------------------------------------

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


def write_reference(noise, path=REFERENCE) -> None:
    atomic_write_bytes(path, npz_bytes(current_outputs(noise)))


def load_reference(path=REFERENCE) -> dict:
    with np.load(io.BytesIO(path.read_bytes())) as z:
        return {k: z[k] for k in z.files}


# --- the part ----------------------------------------------------------------------------------------

def _fmt(v, spec=".2f", suffix="x"):
    return "–" if v is None else f"{v:{spec}}{suffix}"


def goals(shapes: dict, check: list[dict]) -> list[Goal]:
    out = []
    for label, res in shapes.items():
        rows = res["solvers"].values()
        out.append(Goal(f"every solver <= {FLOOR_GOAL}x the floor per NFE at {label} (worst)",
                        max(r["vs_floor"] for r in rows), FLOOR_GOAL))
        shared = [r["vs_diffusers"] for r in rows if "vs_diffusers" in r]
        out.append(Goal(f"every shared solver <= {DIFFUSERS_GOAL}x diffusers' scheduler.step loop per NFE at {label} (worst)",
                        max(shared) if shared else None, DIFFUSERS_GOAL, why_not_measured="diffusers missing"))
    worst = max((r["max_abs_diff"] / r["tolerance"] if r["max_abs_diff"] is not None else math.inf) for r in check) \
        if check else None
    out.append(Goal("fast paths give the same samples: worst max|diff| / tolerance over solver outputs",
                    worst, 1.0, unit="", why_not_measured="no reference npz"))
    return out


def body(shapes: dict, check: list[dict]) -> list[str]:
    lines = ["## Per solver", "",
             f"Near-free model (x0 prediction = x * 0.5) behind nfebench's Denoiser adapter and NFE counter, "
             f"nfe={NFE}, each config with its defaults (configs/solver/*.yaml, its default grid). `/ floor`: "
             "time per NFE over the floor's time per NFE (floor+randn for configs that draw noise by default). "
             "`/ diffusers`: time per NFE over diffusers' step loop's (scale_model_input + model + scheduler.step "
             "per step) for the same method on the same tensors; `/ with set_timesteps` adds the scheduler's "
             "set_timesteps, which a diffusers pipeline pays per call (per batch), as nfebench's solvers pay their "
             "coefficients inside the timed call. Medians of per-round ratios.", ""]
    for label, res in shapes.items():
        fl = res["floor_ms_per_nfe"]
        lines += [f"### {label} float32 ({res['rounds']} rounds)", "",
                  f"Floor: {fl['floor']:.3f} ms per NFE; floor + one batched randn per step: {fl['floor+randn']:.3f} ms.",
                  "", "| solver | NFE | stochastic | ms / NFE | / floor | diffusers ms / NFE (NFE) | "
                  "set_timesteps ms | / diffusers | / with set_timesteps |", "|---|---|---|---|---|---|---|---|---|"]
        for n, r in res["solvers"].items():
            d = f"{r['diffusers_ms_per_nfe']:.3f} ({r['diffusers_nfe']})" if "vs_diffusers" in r else "–"
            lines.append(f"| {n} | {r['nfe']} | {'yes' if r['stochastic'] else 'no'} | {r['ms_per_nfe']:.3f} | "
                         f"{_fmt(r['vs_floor'])} | {d} | {_fmt(r.get('diffusers_set_timesteps_ms'), '.3f', '')} | "
                         f"{_fmt(r.get('vs_diffusers'))} | {_fmt(r.get('vs_diffusers_with_set_timesteps'))} |")
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
            print(f"solvers {label}: {n}: {r['vs_floor']:.2f}x floor, {_fmt(r.get('vs_diffusers'))} diffusers",
                  flush=True)
    gs = goals(shapes, check)
    settings = {"nfe": NFE, "dtype": "float32", "torch threads": 1, "clock": "thread CPU time",
                "rounds": {k: rounds[k] for k in SHAPES}, "quick": quick}
    path = write("solvers", "Solver overhead per NFE: floor and diffusers", settings, gs, body(shapes, check),
                 {"shapes": shapes, "output_check": check}, out)
    print(f"wrote {path}", flush=True)
    return gs
