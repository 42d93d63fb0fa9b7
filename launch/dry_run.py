"""`dry_run=true`: what a run or a sweep would cost, without loading any weights.

For each run: the solver and the options that change numbers, the grid, the requested and counted
NFE (and the paper's count inside an experiment), the samples, and the network evaluations
(counted NFE x samples, x2 for classifier-free guidance, which evaluates a doubled batch).
"""
from __future__ import annotations

import sys

from common.errors import NfebenchError

from .cli import report
from .experiment import paper_count

# Model families whose one NFE evaluates the network on a doubled batch (conditional + null class).
EVALS_PER_NFE = {"diffusers_dit": 2}


def plan_run(cfg: dict) -> dict:
    """The cost of one run from its resolved config alone (solver registry and grid rules, no model)."""
    from sampling import teleport
    from sampling.registry import get_solver

    from .run import _check_solver_options, _final_denoise_cost, _positive_int, budget, grid_config, plan

    nfe = _positive_int(cfg, "nfe")
    samples = _positive_int(cfg, "num_samples")
    opts = dict(cfg["solver"])
    spec = get_solver(opts.pop("name", None))
    _check_solver_options(spec, opts, nfe)
    schedule = grid_config(cfg)
    extra = _final_denoise_cost(cfg)
    steps, counted = budget(cfg, spec, opts)
    if teleport.enabled(cfg.get("teleport")):  # the teleported start costs nothing: the solver walks fewer steps
        p = plan(cfg)
        steps, counted = p.steps, p.cost
    per_nfe = EVALS_PER_NFE.get(cfg["model"].get("family"), 1)
    # run-level state (dlg's persistent chains: burn-in), paid once per run, not per sample
    setup = spec.setup_cost(cfg.get("sample_offset", 0), samples, **opts) if spec.setup_cost else 0
    return {"model": cfg["model"].get("name"), "solver": spec.name, "options": opts, "schedule": schedule.get("name"),
            "nfe": nfe, "counted": counted, "steps": steps, **paper_count(cfg, steps + extra, counted), "samples": samples,
            "setup_row_evals": setup, "nfe_x_samples": counted * samples + setup,
            "network_evals": (counted * samples + setup) * per_nfe,
            "published_solver": (cfg.get("experiment") or {}).get("published_solver")}


def _plain(cfg) -> dict:
    """A Hydra job config (DictConfig with its `hydra` node) as the resolved dict a run receives."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        d = OmegaConf.to_container(cfg, resolve=False)
        d.pop("hydra", None)
        return OmegaConf.to_container(OmegaConf.create(d), resolve=True)
    return dict(cfg)


def _opts(o: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(o.items()))


def plan_lines(cfgs) -> tuple[list[str], list[dict], list[str]]:
    plans, errors, lines = [], [], []
    cfgs = [_plain(c) for c in cfgs]
    exp = (cfgs[0].get("experiment") or {}) if cfgs else {}
    if exp.get("name"):
        lines.append(f"experiment {exp['name']}: {len(cfgs)} runs")
        for p in exp.get("published") or []:
            lines.append(f"  answers published rows: {p['source']} | {p['table']} | {p['checkpoint']}"
                         + (f" | solver {p['solver']}" if p.get("solver") else "")
                         + (f" | nfe {list(p['nfe'])}" if p.get("nfe") else ""))
    conv = exp.get("nfe_convention")
    head = f"{'#':>4}  {'model':<18} {'solver':<58} {'schedule':<15} {'nfe':>5} {'counted':>7}"
    head += f" {conv + ' (paper)':>14}" if conv else ""
    lines.append(head + f" {'samples':>8} {'network evals':>14}  published row")
    for i, cfg in enumerate(cfgs):
        try:
            p = plan_run(cfg)
        except NfebenchError as err:
            errors.append(f"run #{i}: {err}")
            lines.append(f"{i:>4}  error: {err}")
            continue
        plans.append(p)
        solver = f"{p['solver']}({_opts(p['options'])})"
        row = f"{i:>4}  {p['model']:<18} {solver:<58} {p['schedule']:<15} {p['nfe']:>5} {p['counted']:>7}"
        row += f" {p['paper']['value']:>14}" if conv else ""
        lines.append(row + f" {p['samples']:>8} {p['network_evals']:>14,}  {p['published_solver'] or '-'}")
    total = sum(p["network_evals"] for p in plans)
    lines.append(f"total: {len(cfgs)} runs, {sum(p['nfe_x_samples'] for p in plans):,} NFE x samples, "
                 f"{total:,} network evaluations (dry run: nothing launched, no weights loaded)")
    return lines, plans, errors


def print_plan(cfgs) -> None:
    """Prints the plan; a run that would fail makes the dry run fail (exit 2) after the listing."""
    lines, _, errors = plan_lines(cfgs)
    print("\n".join(lines), flush=True)
    if errors:
        sys.exit(report(NfebenchError(f"{len(errors)} of {len(cfgs)} planned runs would fail; first: {errors[0]}")))
