"""One run, as one straight story: plan -> metric suite -> model -> sample every batch -> record.

Every failure a user can cause is an NfebenchError raised before the record is written, so a
failed run never leaves a record behind.
"""
from __future__ import annotations

import inspect
import io
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from launch.samples import sample_writer
from metrics.suites import FID_SUITES, build_metrics, metrics_config
from models.counter import ComputeTally, CountedDenoiser
from models.registry import build_model
from models.thresholding import Thresholded
from common.errors import NfebenchError
from common.registry import check_choice
from sampling.registry import get_solver
from sampling.schedules import make_noise_schedule
from sampling.seeds import SampleNoise, sample_seeds
from sampling import teleport
from sampling.timesteps import final_step, fixed_steps, make_grid

from . import calibration, validate
from .experiment import paper_count
from .records import RECORD_NAME, STATE_NAME, config_hash, git_state, setup_block, versions
from common.files import atomic_write_bytes, atomic_write_json, npz_bytes

if TYPE_CHECKING:
    from sampling.calibration import Need
    from sampling.registry import SolverSpec
    from sampling.schedules import NoiseSchedule
    from sampling.teleport import Handover

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _positive_int(cfg, key, minimum=1):
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise NfebenchError(f"{key} must be an integer >= {minimum}; got {v!r}")
    return v


@dataclass(frozen=True)
class Plan:
    """Everything decided before the model loads: solver, options, dtype, grid and what it costs."""

    spec: SolverSpec
    solver_opts: dict
    dtype: torch.dtype
    noise: NoiseSchedule  # the model config's schedule; the grid lies on it
    ts: np.ndarray
    final_x0: bool  # one more counted evaluation replaces x at the last grid point by the model's x0
    calibration: Need | None = None  # what the solver needs computed from the model first (launch/calibration.py)
    teleport: Handover | None = None  # the Gaussian solution replaces the start of the grid; ts is what is left

    @property
    def t_start(self) -> float:
        """Where the initial noise is drawn (before any teleport)."""
        return self.teleport.t_start if self.teleport else float(self.ts[0])

    @property
    def steps(self) -> int:
        return len(self.ts) - 1

    @property
    def cost(self) -> int:
        return self.spec.cost(self.steps, **self.solver_opts) + self.final_x0


@dataclass(frozen=True)
class SampleStats:
    """What the batch loop measured."""

    counted: int  # NFE per batch, the same for every batch
    network_evals: int  # network batch evaluations per batch (a guided model's doubled batch counts 2)
    model_s: float  # inside model calls
    sample_s: float  # the batch loop: RNG, solver, counter and model (not decoding, not metrics)
    decode_s: float  # latent models' decoder, after sampling (not an NFE)
    compute: dict = field(default_factory=dict)  # MACs and seconds per call configuration (models/counter.py)
    setup: dict | None = None  # evaluations on run-level state shared by later batches (solver's run_state)


def plan(cfg: dict) -> Plan:
    """Every check and decision that needs no model (so no checkpoint loads). Raises on bad input."""
    nfe = _positive_int(cfg, "nfe")
    _positive_int(cfg, "num_samples")
    _positive_int(cfg, "batch_size")
    _positive_int(cfg, "seed", 0)
    _positive_int(cfg, "sample_offset", 0)
    model_cfg = dict(cfg["model"])
    dtype = DTYPES[check_choice("dtype", cfg.get("dtype") or model_cfg.get("dtype", "float32"), DTYPES)]
    # Solver options first: a typo must not wait for anything slower.
    solver_opts = dict(cfg["solver"])
    spec = get_solver(solver_opts.pop("name", None))
    validate.check_solver_options(spec.name, spec.fn, solver_opts)
    _check_solver_options(spec, solver_opts, nfe)
    validate.check_schedule_options(dict(cfg["schedule"]))
    noise = make_noise_schedule(**dict(model_cfg["noise_schedule"]))
    validate.check_t_end(cfg.get("t_end"), float(noise.T))
    steps, _ = budget(cfg, spec, solver_opts)
    grid_opts = grid_config(cfg)
    ts = make_grid(noise, steps, grid_opts.pop("name", None), t_end=cfg.get("t_end"), **grid_opts)
    hand = teleport.plan(cfg.get("teleport"), noise, ts, grid_config(cfg), cfg.get("t_end"), model_cfg)
    ts = hand.ts if hand else ts
    need = spec.calibration(ts, noise, dtype, **solver_opts) if spec.calibration else None
    p = Plan(spec, solver_opts, dtype, noise, ts, bool(_final_denoise_cost(cfg)), need, hand)
    calibration.check(cfg, p)
    return p


def budget(cfg: dict, spec, solver_opts: dict) -> tuple[int, int]:
    """(steps, counted NFE) of a run: what the solver's NFE rule fits in the budget, or what an
    explicit grid fixes; raises when that does not fit in `nfe`."""
    nfe, extra = cfg["nfe"], _final_denoise_cost(cfg)
    grid_opts = grid_config(cfg)
    steps = fixed_steps(grid_opts.get("name"), grid_opts)
    if steps is None:
        steps = spec.steps(nfe - extra, **solver_opts)
        if steps < 1:
            raise NfebenchError(f"nfe={nfe} is below the minimum of solver '{spec.name}' "
                                f"({spec.min_nfe(**solver_opts)} NFE)")
    cost = spec.cost(steps, **solver_opts) + extra
    if cost > nfe:
        raise NfebenchError(f"solver '{spec.name}' needs {cost} NFE for {steps} steps but the budget is nfe={nfe}")
    return steps, cost


def load_model(cfg: dict):
    """The model config's denoiser (checkpoint and data loading happen here), thresholded if asked."""
    model_cfg = {k: v for k, v in cfg["model"].items() if k != "dtype"}
    model = build_model(model_cfg)
    if cfg.get("dynamic_thresholding", {}).get("enabled"):
        model = Thresholded(model, **{k: v for k, v in cfg["dynamic_thresholding"].items() if k != "enabled"})
    return model


def suite_needs_model(cfg: dict) -> bool:
    """FID suites score images against reference statistics and `none` scores nothing; the others
    (exact, digits_fd) ask the model."""
    return metrics_config(cfg).get("name") not in (*FID_SUITES, "none")


def metric_suite(cfg: dict, p: Plan, model=None):
    return build_metrics(metrics_config(cfg), model, p.t_start, float(p.ts[-1]))


def _check_solver_options(spec, opts: dict, nfe: int) -> None:
    """Unknown or ill-typed solver options fail here, in one line, not deep inside the loop."""
    try:
        inspect.signature(spec.fn).bind(None, None, None, None, None, **opts)
        steps = max(spec.steps(nfe, **opts), 1)
        spec.cost(steps, **opts)
        if spec.describe:
            spec.describe(steps, **opts)
    except (TypeError, ValueError) as err:
        raise NfebenchError(f"bad options for solver '{spec.name}' {opts}: {err}") from None


def grid_config(cfg) -> dict:
    """The schedule the solver walks: a protocol preset's (protocol=diffusers) replaces `schedule`."""
    protocol = cfg.get("protocol") or {}
    if protocol.get("name", "native") == "native":
        return dict(cfg["schedule"])
    if not protocol.get("schedule"):
        raise NfebenchError(f"protocol '{protocol['name']}' has no preset for solver '{cfg['solver'].get('name')}'; "
                            f"presets: {', '.join(protocol.get('solvers', []))}")
    return dict(protocol["schedule"])


def _final_denoise_cost(cfg) -> int:
    # denoise_to_zero, or a grid whose last step goes to sigma = 0: one extra, counted evaluation that
    # replaces x at the last grid point by the model's x0.
    return 1 if cfg.get("denoise_to_zero") or final_step(grid_config(cfg)) else 0


def _nonfinite_message(counter: CountedDenoiser) -> str:
    k = counter.first_nonfinite_call()
    if k is None:
        return (f"non-finite sample: NaN/Inf first appeared in the solver update after the last of "
                f"{counter.count} model evaluations")
    return (f"non-finite sample: NaN/Inf first appeared at model evaluation {k} of {counter.count} "
            f"(t={counter.times[k - 1]:.6g})")


def _progress(batches, desc: str, **kw):
    """tqdm over the batch loop; silent when stderr is not a terminal (logs, SLURM, CI)."""
    from tqdm import tqdm

    return tqdm(batches, desc=desc, disable=None, leave=False, dynamic_ncols=True, **kw)


def sample_batch(cfg: dict, p: Plan, model, idx, device, seeds=None, trace=False, calibrated=None, run_state=None):
    """(samples, initial noise, counter) of the samples in idx; everything random comes from (seed, i).

    seeds: the indices' generator seeds (sampling.seeds.sample_seeds), if already computed.
    trace: the counter keeps a reduction per call, to locate a NaN (a replay of a failed batch).
    calibrated: {kind: arrays} from launch.calibration.prepare, when the plan needs calibration.
    run_state: what the solver keeps across the run's batches (SolverSpec.run_state), if anything."""
    extra = {"calibration": calibrated[p.calibration.kind]} if p.calibration else {}
    if run_state is not None:
        extra["run_state"] = run_state
    rng = SampleNoise(cfg["seed"], idx, model.shape, dtype=p.dtype, device=device, seeds=seeds)
    x_start = float(model.noise.sigma(p.t_start)) * rng.draw()
    x = x_start
    if p.teleport and p.teleport.need:  # the closed-form Gaussian PF-ODE to the hand-over time, 0 NFE
        x = teleport.teleport(x_start, p.t_start, p.teleport.t, model.noise, calibrated[teleport.KIND])
    # Per-sample conditioning (class labels) depends on (seed, i) only; the counter binds it.
    cond = model.conditions(cfg["seed"], idx) if hasattr(model, "conditions") else None
    if cond is not None:  # on the device once per batch, not copied there by every model call
        cond = cond.to(device, non_blocking=True)
    counter = CountedDenoiser(model, budget=cfg["nfe"], cond=cond, trace=trace, calls=p.cost)
    with torch.no_grad():
        x = p.spec.fn(counter, x, p.ts, model.noise, rng, **p.solver_opts, **extra)
        if p.final_x0:
            t = float(p.ts[-1])
            x = p.spec.final(counter, x, t, **p.solver_opts) if p.spec.final else counter(x, t)
    return x, x_start, counter


def sample_batches(cfg: dict, p: Plan, model, device, on_batch, calibrated=None) -> SampleStats:
    """Run the solver over all sample indices; on_batch(samples, x_start, indices) sees each batch.

    Latent models' samples are decoded (model.decode) before on_batch; decoding is not an NFE.
    """
    first, n, bs = cfg["sample_offset"], cfg["num_samples"], cfg["batch_size"]
    counted, evals, tally = set(), set(), ComputeTally()
    start = time.perf_counter()
    seeds = sample_seeds(cfg["seed"], range(first, first + n))  # one vectorised call for the whole run
    state = p.spec.run_state(cfg["seed"], model.shape, p.dtype, device, **p.solver_opts) if p.spec.run_state else None
    setup_rows = setup_evals = 0
    model_s, sample_s, decode_s = 0.0, time.perf_counter() - start, 0.0
    for lo in _progress(range(0, n, bs), "sampling", unit="batch"):
        idx = range(first + lo, first + min(lo + bs, n))
        start = time.perf_counter()
        x, x_start, counter = sample_batch(cfg, p, model, idx, device, seeds[lo: lo + bs], calibrated=calibrated,
                                           run_state=state)
        if not bool(torch.isfinite(x).all()):  # the loop's one host sync per batch
            # deterministic per sample, so a traced replay of this batch finds the step
            traced = sample_batch(cfg, p, model, idx, device, seeds[lo: lo + bs], trace=True, calibrated=calibrated,
                                  run_state=state)[2]
            raise NfebenchError(_nonfinite_message(traced))
        sample_s += time.perf_counter() - start
        counted.add(counter.count)
        evals.add(counter.network_evals)
        setup_rows, setup_evals = setup_rows + counter.setup_rows, setup_evals + counter.setup_evals
        tally.add(counter)
        model_s += counter.seconds
        if hasattr(model, "decode"):
            start = time.perf_counter()
            x = model.decode(x)
            decode_s += time.perf_counter() - start
        on_batch(x, x_start, idx)
    if len(counted) != 1:
        raise NfebenchError(f"solver spent a different number of model evaluations per batch: {sorted(counted)}")
    setup = None if state is None else setup_block(setup_rows, setup_evals, n)
    return SampleStats(counted.pop(), max(evals), model_s, sample_s, decode_s, tally.record(n), setup)


def _png_grid(images: torch.Tensor) -> bytes:
    """A square-ish grid of images, 2 white pixels between tiles, as PNG bytes.

    Drawn with plain tensor indexing (the layout of torchvision's make_grid with padding=2,
    pad_value=1): importing torchvision costs a local worker more than a small run itself.
    """
    from PIL import Image

    x = ((images.float().clamp(-1, 1) + 1) / 2).cpu()
    scale = max(1, 64 // x.shape[-1])  # 8x8 digits are unreadable at native size
    x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, c, h, w = x.shape
    cols = min(n, int(math.ceil(math.sqrt(n))))
    rows, pad = int(math.ceil(n / cols)), 2
    grid = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[k]
    if n == 1:
        grid = x[0]  # a single image has no border (as make_grid)
    buf = io.BytesIO()
    Image.fromarray((grid.permute(1, 2, 0) * 255).round().byte().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def run_experiment(cfg: dict, out_dir: Path) -> dict:
    """cfg is the resolved config as a plain dict; returns the record written to out_dir."""
    t0 = time.perf_counter()
    p = plan(cfg)
    validate.checkpoint_files(cfg["model"])  # a missing checkpoint file fails before anything loads
    device = validate.check_device(cfg.get("device"))
    # FID suites need no model: their extractor weights and reference statistics are found (or
    # missing) before a checkpoint spends seconds to minutes loading
    suite = None if suite_needs_model(cfg) else metric_suite(cfg, p)
    model = load_model(cfg)
    calibrated, cal_info = calibration.prepare(cfg, p, model, device)
    if cfg.get("calibrate_only"):
        return _write_calibration_record(cfg, p, model, cal_info, out_dir, time.perf_counter() - t0)
    suite = suite or metric_suite(cfg, p, model)
    save = sample_writer(cfg.get("save_samples"), out_dir)
    shown, n_shown = [], cfg.get("grid_images", 64)

    def on_batch(x, x_start, idx):
        suite.update(x, x_start, indices=idx)
        if save:
            save(x, idx)
        if sum(len(k) for k in shown) < n_shown:
            shown.append(x[:n_shown].cpu())

    load_s = time.perf_counter() - t0
    try:
        stats = sample_batches(cfg, p, model, device, on_batch, calibrated)
        results = suite.result()
    except BaseException:
        if save:
            save.discard()
        raise
    timing = {"total_s": time.perf_counter() - t0, "load_s": load_s}
    record = build_record(cfg, p, model, device, stats, results, suite.protocol(), timing)
    record["calibration"] = cal_info
    if p.teleport:
        record["teleport"] = teleport_record(cfg, p, model.noise)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / STATE_NAME, npz_bytes(suite.state()))
    if save:
        save.commit()
    if shown:
        atomic_write_bytes(out_dir / "samples.png", _png_grid(torch.cat(shown)[:n_shown]))
    atomic_write_json(out_dir / RECORD_NAME, record)
    return record


def teleport_record(cfg: dict, p: Plan, noise) -> dict:
    """The hand-over and what it saved; nfe.counted stays the budget actually spent."""
    full = budget(cfg, p.spec, p.solver_opts)[1]
    return {"options": dict(cfg["teleport"]), **p.teleport.describe(noise), "nfe_without": full,
            "nfe_saved": full - p.cost}


def _write_calibration_record(cfg: dict, p: Plan, model, cal_info: dict, out_dir, total_s: float) -> dict:
    """calibrate_only: a record that says what was calibrated and what it cost; no samples, no metrics
    (status "calibrated": collectors and resume look only for "complete")."""
    record = {"status": "calibrated", "created_at": datetime.now(timezone.utc).isoformat(), "config": cfg,
              "config_hash": config_hash(cfg), "model": {"name": cfg["model"].get("name"), **model.describe()},
              "solver": {"name": p.spec.name, "options": p.solver_opts, "steps": p.steps},
              "nfe": {"requested": cfg["nfe"], "counted": 0}, "samples": {}, "metrics": {},
              "calibration": cal_info, "timing": {"total_s": total_s}, "versions": versions(), "git": git_state()}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out_dir) / RECORD_NAME, record)
    return record


def build_record(cfg: dict, p: Plan, model, device, stats: SampleStats, results: dict, protocol: dict,
                 timing: dict) -> dict:
    """The run record: what ran (config, model, solver, grid), what it cost, what it scored."""
    first, n = cfg["sample_offset"], cfg["num_samples"]
    total_s = timing["total_s"]
    return {
        "status": "complete",
        "created_at": datetime.now(timezone.utc).isoformat(),
        "config": cfg,
        "config_hash": config_hash(cfg),
        "model": {"name": cfg["model"].get("name"), **model.describe()},
        "solver": {"name": p.spec.name, "options": p.solver_opts, "steps": p.steps,
                   **(p.spec.describe(p.steps, **p.solver_opts) if p.spec.describe else {})},
        "schedule": {**grid_config(cfg), "final_x0_step": p.final_x0, "t_grid": [float(t) for t in p.ts],
                     "edm_sigma_grid": [float(s) for s in model.noise.edm_sigma(p.ts)]},
        "nfe": {"requested": cfg["nfe"], "counted": stats.counted, "network_evals": stats.network_evals,
                **paper_count(cfg, p.steps + p.final_x0, stats.counted),
                # run-level state that later samples share (dlg's persistent chains): its evaluations are counted
                # apart from the per-sample NFE; amortized = counted + their share per output sample
                **({} if stats.setup is None else
                   {"setup": stats.setup, "amortized_per_sample": stats.counted + stats.setup["nfe_per_sample"]})},
        # compute: multiply-accumulates per network configuration (DeepCache's partial calls are cheaper
        # than full ones) and wall time per call, beside NFE
        "compute": stats.compute,
        "metrics": results,
        "metrics_protocol": {**protocol, "denoise_to_zero": p.final_x0, "seed": cfg["seed"],
                             "index_range": [first, first + n], "save_samples": cfg.get("save_samples") or False},
        "samples": {"num_samples": n, "seed": cfg["seed"], "index_range": [first, first + n],
                    "batch_size": cfg["batch_size"], "dtype": str(p.dtype).replace("torch.", ""),
                    "device": str(device)},
        # load_s: imports, checkpoint and data before the first sample; sample_s: the batch loop, of
        # which model_s is inside the model; rest_s: everything but the model and the decoder.
        "timing": {"total_s": total_s, "load_s": timing["load_s"], "sample_s": stats.sample_s,
                   "model_s": stats.model_s, "decode_s": stats.decode_s,
                   "rest_s": total_s - stats.model_s - stats.decode_s},
        "versions": versions(),
        "git": git_state(),
    }


def summary_line(rec: dict, out_dir) -> str:
    if rec["status"] == "calibrated":
        done = ", ".join(f"{k} {v['status']} ({v['nfe']} NFE, {v['seconds']:.1f}s): {v['file']}"
                         for k, v in rec["calibration"].items())
        return f"{rec['model']['name']} | {rec['solver']['name']} | calibrate_only | {done} | {out_dir}"
    opts = ",".join(f"{k}={v}" for k, v in sorted(rec["solver"]["options"].items()))
    mets = " ".join(f"{k}={v:.6g}" for k, v in rec["metrics"].items())
    return (f"{rec['model']['name']} | {rec['solver']['name']}({opts}) | {rec['schedule']['name']} | "
            f"nfe {rec['nfe']['requested']} (counted {rec['nfe']['counted']}) | {mets} | "
            f"{rec['samples']['num_samples']} samples | {rec['timing']['total_s']:.1f}s | {out_dir}")
