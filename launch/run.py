"""One run: config -> model -> solver -> metrics -> record.

Every failure a user can cause is an NfebenchError raised before the record is written, so a
failed run never leaves a record behind.
"""
from __future__ import annotations

import inspect
import io
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from launch.samples import sample_writer
from metrics.suites import FID_SUITES, build_metrics, metrics_config
from models.counter import CountedDenoiser
from models.registry import build_model
from models.thresholding import Thresholded
from common.errors import NfebenchError
from sampling.registry import get_solver
from sampling.schedules import make_noise_schedule
from sampling.seeds import SampleNoise
from sampling.timesteps import final_step, make_grid

from . import validate
from .experiment import paper_count
from .records import RECORD_NAME, STATE_NAME, config_hash, git_state, versions
from common.files import atomic_write_bytes, atomic_write_json, npz_bytes

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _positive_int(cfg, key, minimum=1):
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise NfebenchError(f"{key} must be an integer >= {minimum}; got {v!r}")
    return v


def check(cfg: dict):
    """Every check that needs no model: (solver spec, solver options, dtype). Raises on bad input."""
    nfe = _positive_int(cfg, "nfe")
    _positive_int(cfg, "num_samples")
    _positive_int(cfg, "batch_size")
    _positive_int(cfg, "seed", 0)
    _positive_int(cfg, "sample_offset", 0)
    model_cfg = dict(cfg["model"])
    dtype_name = cfg.get("dtype") or model_cfg.get("dtype", "float32")
    if dtype_name not in DTYPES:
        raise NfebenchError(f"dtype must be one of {', '.join(DTYPES)}; got '{dtype_name}'")
    # Solver options first: a typo must not wait for a large checkpoint to load.
    solver_opts = dict(cfg["solver"])
    spec = get_solver(solver_opts.pop("name", None))
    validate.check_solver_options(spec.name, spec.fn, solver_opts)
    _check_solver_options(spec, solver_opts, nfe)
    grid_opts = dict(cfg["schedule"])
    validate.check_schedule_options(grid_opts)
    if model_cfg.get("noise_schedule"):
        validate.check_t_end(cfg.get("t_end"), float(make_noise_schedule(**dict(model_cfg["noise_schedule"])).T))
    validate.checkpoint_files(model_cfg)
    return spec, solver_opts, DTYPES[dtype_name]


def plan(cfg: dict, checked=None):
    """Everything decided before sampling: model, solver, options, grid. Raises on bad input."""
    spec, solver_opts, dtype = checked or check(cfg)
    nfe = cfg["nfe"]
    model_cfg = dict(cfg["model"])
    model_cfg.pop("dtype", None)
    model = build_model(model_cfg)
    if cfg.get("dynamic_thresholding", {}).get("enabled"):
        model = Thresholded(model, **{k: v for k, v in cfg["dynamic_thresholding"].items() if k != "enabled"})
    grid_opts = grid_config(cfg)
    grid_name = grid_opts.pop("name", None)
    if grid_name == "explicit":
        steps = len(grid_opts.get("ts") or ()) - 1
    else:
        steps = spec.steps(nfe - _final_denoise_cost(cfg), **solver_opts)
        if steps < 1:
            raise NfebenchError(f"nfe={nfe} is below the minimum of solver '{spec.name}' ({spec.min_nfe(**solver_opts)} NFE)")
    ts = make_grid(model.noise, steps, grid_name, t_end=cfg.get("t_end"), **grid_opts)
    cost = spec.cost(steps, **solver_opts) + _final_denoise_cost(cfg)
    if cost > nfe:
        raise NfebenchError(f"solver '{spec.name}' needs {cost} NFE for {steps} steps but the budget is nfe={nfe}")
    return model, spec, solver_opts, ts, dtype


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


def sample_batches(cfg: dict, model, spec, solver_opts, ts, dtype, device, on_batch, stats: dict | None = None):
    """Run the solver over all sample indices; on_batch(samples, x_start, indices) sees each batch.

    Latent models' samples are decoded (model.decode) before on_batch; decoding is not an NFE.
    `stats`, if given, receives network_evals (network batch evaluations per batch) and decode_s.
    """
    noise, nfe = model.noise, cfg["nfe"]
    first, n, bs = cfg["sample_offset"], cfg["num_samples"], cfg["batch_size"]
    sigma_start = float(noise.sigma(ts[0]))
    counted, model_s = set(), 0.0
    evals, decode_s = set(), 0.0
    for lo in _progress(range(first, first + n, bs), "sampling", unit="batch"):
        idx = range(lo, min(lo + bs, first + n))
        rng = SampleNoise(cfg["seed"], idx, model.shape, dtype=dtype, device=device)
        x_start = sigma_start * rng.draw()
        # Per-sample conditioning (class labels) depends on (seed, i) only; the counter binds it.
        cond = model.conditions(cfg["seed"], idx) if hasattr(model, "conditions") else None
        counter = CountedDenoiser(model, budget=nfe, cond=cond)
        with torch.no_grad():
            x = spec.fn(counter, x_start, ts, noise, rng, **solver_opts)
            if _final_denoise_cost(cfg):
                x = spec.final(counter, x, float(ts[-1]), **solver_opts) if spec.final else counter(x, float(ts[-1]))
        if not bool(torch.isfinite(x).all()):
            raise NfebenchError(_nonfinite_message(counter))
        counted.add(counter.count)
        evals.add(counter.network_evals)
        model_s += counter.seconds
        if hasattr(model, "decode"):
            t_dec = time.perf_counter()
            x = model.decode(x)
            decode_s += time.perf_counter() - t_dec
        on_batch(x, x_start, idx)
    if len(counted) != 1:
        raise NfebenchError(f"solver spent a different number of model evaluations per batch: {sorted(counted)}")
    if stats is not None:
        stats.update(network_evals=max(evals), decode_s=decode_s)
    return counted.pop(), model_s


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
    checked = check(cfg)
    device = validate.check_device(cfg.get("device"))
    mcfg = metrics_config(cfg)
    # FID suites need no model: their extractor weights and reference statistics are found (or
    # missing) before a checkpoint spends seconds to minutes loading
    suite = build_metrics(mcfg, None, None, None) if mcfg.get("name") in FID_SUITES else None
    model, spec, solver_opts, ts, dtype = plan(cfg, checked)
    if suite is None:
        suite = build_metrics(mcfg, model, float(ts[0]), float(ts[-1]))
    save = sample_writer(cfg.get("save_samples"), out_dir)
    keep = []

    def on_batch(x, x_start, idx):
        suite.update(x, x_start, indices=idx)
        if save:
            save(x, idx)
        if sum(len(k) for k in keep) < cfg.get("grid_images", 64):
            keep.append(x[: cfg.get("grid_images", 64)].cpu())

    stats = {}
    try:
        counted, model_s = sample_batches(cfg, model, spec, solver_opts, ts, dtype, device, on_batch, stats)
        results = suite.result()
    except BaseException:
        if save:
            save.discard()
        raise
    total_s = time.perf_counter() - t0
    steps = len(ts) - 1
    first = cfg["sample_offset"]
    record = {
        "status": "complete",
        "created_at": datetime.now(timezone.utc).isoformat(),
        "config": cfg,
        "config_hash": config_hash(cfg),
        "model": {"name": cfg["model"].get("name"), **model.describe()},
        "solver": {"name": spec.name, "options": solver_opts, "steps": steps,
                   **(spec.describe(steps, **solver_opts) if spec.describe else {})},
        "schedule": {**grid_config(cfg), "final_x0_step": bool(_final_denoise_cost(cfg)), "t_grid": [float(t) for t in ts],
                     "edm_sigma_grid": [float(s) for s in model.noise.edm_sigma(ts)]},
        "nfe": {"requested": cfg["nfe"], "counted": counted, "network_evals": stats["network_evals"],
                **paper_count(cfg, steps + _final_denoise_cost(cfg), counted)},
        "metrics": results,
        "metrics_protocol": {**suite.protocol(), "denoise_to_zero": bool(_final_denoise_cost(cfg)),
                             "seed": cfg["seed"], "index_range": [first, first + cfg["num_samples"]],
                             "save_samples": cfg.get("save_samples") or False},
        "samples": {"num_samples": cfg["num_samples"], "seed": cfg["seed"], "index_range": [first, first + cfg["num_samples"]],
                    "batch_size": cfg["batch_size"], "dtype": str(dtype).replace("torch.", ""), "device": str(device)},
        "timing": {"total_s": total_s, "model_s": model_s, "decode_s": stats["decode_s"],
                   "rest_s": total_s - model_s - stats["decode_s"]},
        "versions": versions(),
        "git": git_state(),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / STATE_NAME, npz_bytes(suite.state()))
    if save:
        save.commit()
    if keep:
        atomic_write_bytes(out_dir / "samples.png", _png_grid(torch.cat(keep)[: cfg.get("grid_images", 64)]))
    atomic_write_json(out_dir / RECORD_NAME, record)
    return record


def summary_line(rec: dict, out_dir) -> str:
    opts = ",".join(f"{k}={v}" for k, v in sorted(rec["solver"]["options"].items()))
    mets = " ".join(f"{k}={v:.6g}" for k, v in rec["metrics"].items())
    return (f"{rec['model']['name']} | {rec['solver']['name']}({opts}) | {rec['schedule']['name']} | "
            f"nfe {rec['nfe']['requested']} (counted {rec['nfe']['counted']}) | {mets} | "
            f"{rec['samples']['num_samples']} samples | {rec['timing']['total_s']:.1f}s | {out_dir}")
