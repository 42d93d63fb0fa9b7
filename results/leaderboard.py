"""The CPU leaderboard: every solver at NFE 3..50 on gaussian, digits and digits_unet, ranked per NFE.

    python -m results.leaderboard run   [--out results/leaderboard] [--launcher local|basic] [overrides...]
    python -m results.leaderboard render SWEEP_DIR [--out DIR]
    python -m results.leaderboard check [--committed results/leaderboard] [--launcher ...] [overrides...]

`run` sweeps `+experiment=leaderboard_cpu` (one thread per run, so the numbers do not depend on the
machine's core count) and renders; `check` does the same into a temporary folder and fails, with a
diff, when the committed README.md or leaderboard.csv differs. Numbers are rounded to 4 significant
digits before ranking, so what is compared is exactly what is shown. Ranking and best-cell marking
are done here; the plots (one figure per metric) are the collector's (`results.collect --plot`). Plots
are not compared (their bytes depend on the matplotlib and font versions); timing.json is not either.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from launch.cli import report
from launch.records import read_records
from common.files import atomic_write_bytes
from common.errors import NfebenchError
from common.paths import REPO

OUT = REPO / "results" / "leaderboard"
EXPERIMENT = "leaderboard_cpu"
COMPARED = ("README.md", "leaderboard.csv")
# (model, metric, what it measures), in the order the README shows them
TABLES = [
    ("gaussian", "fd_pixel", "Fréchet distance to the exact marginal at t_end (pixel space)"),
    ("gaussian", "ode_rmse", "RMS distance to the closed-form probability-flow ODE solution"),
    ("digits", "fd_pixel", "Fréchet distance to the exact marginal at t_end (pixel space)"),
    ("digits", "ode_rmse", "RMS distance to the reference ODE solution (DOP853, rtol 1e-8)"),
    ("digits_unet", "fd_digits", "Fréchet distance to the 1797 digits (pixel space)"),
]
SIGNIFICANT = 4
# Quality against compute: (model, metric); its DeepCache runs (model.deepcache) are recorded under
# "<model>+deepcache" and shown beside the plain runs at the same NFE, with MACs per sample.
COMPUTE_TABLES = [("digits_unet", "fd_digits")]
CACHED = "+deepcache"


def rounded(v: float) -> str:
    return f"{v:.{SIGNIFICANT}g}"


def solver_defaults(name: str) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / "solver" / f"{name}.yaml").read_text()) or {}
    return {k: v for k, v in cfg.items() if k not in ("defaults", "name")}


def solver_label(name: str, options: dict) -> str:
    """The solver with only the options that differ from its config's defaults."""
    base = solver_defaults(name)
    diff = [f"{k}={v}" for k, v in sorted(options.items()) if base.get(k, object()) != v]
    return f"{name}({','.join(diff)})" if diff else name


def teleport_label(rec: dict) -> str:
    """A teleported run is a row of its own: ' + teleport(...)' with the options that differ from config.yaml's."""
    tp = rec.get("teleport")
    if not tp:
        return ""
    base = yaml.safe_load((REPO / "configs" / "config.yaml").read_text())["teleport"]
    return " + teleport(" + ",".join(f"{k}={v}" for k, v in sorted(tp["options"].items()) if base.get(k) != v) + ")"


def records_frame(sweep_dir: Path) -> pd.DataFrame:
    recs = read_records(sweep_dir)
    if not recs:
        raise NfebenchError(f"no complete run records under {sweep_dir}")
    rows = []
    for r in recs:
        cache = r["model"].get("deepcache")
        solver = solver_label(r["solver"]["name"], r["solver"]["options"]) + teleport_label(r)
        if cache:
            shown = [k for k in ("interval", "branch", "skip_type", "pow") if k in cache and cache[k] != "uniform"]
            solver += CACHED + "(" + ",".join(f"{k}={cache[k]}" for k in shown) + ")"
        macs = (r.get("compute") or {}).get("macs_per_sample")
        for metric, value in r["metrics"].items():
            rows.append({"model": r["model"]["name"] + (CACHED if cache else ""), "metric": metric, "solver": solver,
                         "nfe": int(r["nfe"]["requested"]), "counted_nfe": int(r["nfe"]["counted"]),
                         "value": rounded(value), "num_samples": int(r["samples"]["num_samples"]),
                         "seed": int(r["samples"]["seed"]), "macs_per_sample": "" if macs is None else str(round(macs))})
    df = pd.DataFrame(rows)
    dup = df.duplicated(["model", "metric", "solver", "nfe"])
    if dup.any():
        raise NfebenchError(f"several records for one leaderboard cell, e.g. {df[dup].iloc[0].to_dict()}")
    return df


def ranked(df: pd.DataFrame) -> pd.DataFrame:
    """Rank per (model, metric, NFE) on the rounded values (lower is better; ties share a rank)."""
    df = df.copy()
    df["rank"] = (df.assign(v=df["value"].astype(float)).groupby(["model", "metric", "nfe"])["v"]
                  .rank(method="min").astype(int))
    return df.sort_values(["model", "metric", "solver", "nfe"], key=_order).reset_index(drop=True)


def _order(col: pd.Series) -> pd.Series:
    if col.name in ("model", "metric"):
        order = {k: i for i, k in enumerate(dict.fromkeys(x for t in TABLES for x in t[:2]))}
        return col.map(lambda v: order.get(v, len(order)))
    return col


def markdown_table(sub: pd.DataFrame) -> str:
    nfes = sorted(sub["nfe"].unique())
    mean_rank = sub.groupby("solver")["rank"].mean()
    solvers = sorted(mean_rank.index, key=lambda s: (mean_rank[s], s))
    cells = {(r.solver, r.nfe): r for r in sub.itertuples()}
    lines = ["| solver | " + " | ".join(f"NFE {n}" for n in nfes) + " | mean rank |",
             "|---|" + "---:|" * (len(nfes) + 1)]
    for s in solvers:
        out = []
        for n in nfes:
            c = cells.get((s, n))
            if c is None:
                out.append("")
                continue
            text = c.value + (f" ({c.counted_nfe})" if c.counted_nfe != n else "")
            out.append(f"**{text}**" if c.rank == 1 else text)
        lines.append(f"| {s} | " + " | ".join(out) + f" | {mean_rank[s]:.2f} |")
    return "\n".join(lines) + "\n"


def compute_table(df: pd.DataFrame, model: str, metric: str) -> str:
    """The cached runs beside the plain ones at their NFEs: value and MACs per sample, NFE by NFE."""
    cached = df[(df["model"] == model + CACHED) & (df["metric"] == metric)]
    nfes = set(cached["nfe"])
    plain = df[(df["model"] == model) & (df["metric"] == metric) & df["nfe"].isin(nfes)
               & df["solver"].isin({s.split(CACHED)[0] for s in cached["solver"]})]
    lines = ["| solver | NFE | MACs per sample | value |", "|---|---:|---:|---:|"]
    for r in pd.concat([plain, cached]).sort_values(["nfe", "solver"]).itertuples():
        macs = _macs_text(float(r.macs_per_sample)) if r.macs_per_sample != "" else ""
        lines.append(f"| {r.solver} | {r.nfe}{f' ({r.counted_nfe})' if r.counted_nfe != r.nfe else ''} | {macs} | "
                     f"{r.value} |")
    return "\n".join(lines) + "\n"


def _macs_text(v: float) -> str:
    from .collect import macs_text

    return macs_text(v)


def plots(sweep_dir: Path, out: Path, metrics: list[str]) -> None:
    """metric vs counted NFE, one figure per metric (a panel per model), drawn by the collector's CLI."""
    from . import collect

    for metric in metrics:
        for ext in ("png", "svg"):
            if collect.main([str(sweep_dir), "--metric", metric, "--format", "csv", "--out", os.devnull,
                             "--plot", str(out / f"{metric}.{ext}")]) != 0:
                raise NfebenchError(f"the collector could not plot {metric} from {sweep_dir}")


def render(sweep_dir: Path, out: Path) -> pd.DataFrame:
    """README.md, leaderboard.csv and one PNG/SVG per table from a sweep's records, each file
    written atomically; nothing is written when the records are unusable."""
    df = ranked(records_frame(sweep_dir))
    out.mkdir(parents=True, exist_ok=True)
    samples = df.groupby("model")["num_samples"].first().to_dict()
    text = [
        "# nfebench CPU leaderboard",
        "",
        "Generated by `make leaderboard` (`python launch.py -m +experiment=leaderboard_cpu launcher=local`, then",
        "`python -m results.leaderboard render`); CI regenerates it with `make leaderboard-check` and fails when",
        "a number here changes. Do not edit by hand.",
        "",
        "Protocol: float64 solvers, seed 0, one thread per run; "
        + ", ".join(f"`{m}` {n} samples" for m, n in samples.items())
        + ". Lower is better in every table. Values are rounded to 4 significant digits, then ranked per NFE",
        "column; the best cell of each column is **bold** (ties share it). A value followed by (n) spent n model",
        "evaluations, fewer than the column's budget (Heun: 2N-1, PLMS: N+1, score_sde_pc: 2N,",
        "time_shift: 1+(N-1)(2w+1) for N steps). Rows are solvers with the options that differ from their",
        "config's defaults, sorted by mean rank. Stochastic samplers (ddpm, dpmpp_sde, score_sde_pc, ddim",
        "eta=1) follow no ODE: their `ode_rmse` is shown but means only distance from the deterministic path.",
        "",
    ]
    for model, metric, what in TABLES:
        sub = df[(df["model"] == model) & (df["metric"] == metric)]
        if sub.empty:
            continue
        text += [f"## `{model}`: `{metric}`", "", what + ".", "", markdown_table(sub),
                 f"![{metric} vs counted NFE]({metric}.png) ([SVG]({metric}.svg))", ""]
    for model, metric in COMPUTE_TABLES:
        if not df[(df["model"] == model + CACHED) & (df["metric"] == metric)].empty:
            text += [f"## `{model}` with DeepCache: `{metric}` against MACs", "",
                     "DeepCache (`model.deepcache`) still spends one NFE per call but most calls run only the shallow "
                     "layers: the cost that differs is multiply-accumulates per sample (the record's "
                     "`compute.macs_per_sample`, counted by torch's FlopCounterMode). Plain runs of the same solvers "
                     "at the same NFE for comparison.", "", compute_table(df, model, metric)]
    plots(sweep_dir, out, [m for m in dict.fromkeys(t[1] for t in TABLES) if m in set(df["metric"])])
    csv = df[["model", "metric", "solver", "nfe", "counted_nfe", "value", "rank", "num_samples", "seed",
              "macs_per_sample"]]
    atomic_write_bytes(out / "leaderboard.csv", csv.to_csv(index=False, lineterminator="\n").encode())
    atomic_write_bytes(out / "README.md", "\n".join(text).encode())
    return df


def sweep(sweep_dir: Path, launcher: str, overrides: list[str]) -> float:
    """Runs the leaderboard experiment; returns its wall time in seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    cmd = [sys.executable, str(REPO / "launch.py"), "-m", f"+experiment={EXPERIMENT}", f"launcher={launcher}",
           f"hydra.sweep.dir={sweep_dir}", *overrides]
    if launcher == "local":
        cmd.append("hydra.launcher.threads_per_worker=1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()][-3:]
        raise NfebenchError(f"leaderboard sweep failed (exit {proc.returncode}): {' / '.join(tail)}")
    return time.perf_counter() - t0


def compare(new: Path, committed: Path) -> list[str]:
    """Unified diff lines of the compared files; empty when they match."""
    diff = []
    for name in COMPARED:
        a = (committed / name).read_text().splitlines() if (committed / name).is_file() else []
        b = (new / name).read_text().splitlines()
        diff += difflib.unified_diff(a, b, f"committed/{name}", f"regenerated/{name}", lineterm="", n=0)
    return diff


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m results.leaderboard", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="render a finished sweep")
    r.add_argument("sweep_dir", type=Path)
    r.add_argument("--out", type=Path, default=OUT)
    for name in ("run", "check"):
        s = sub.add_parser(name)
        s.add_argument("--launcher", default="local", choices=["local", "basic"])
        s.add_argument("overrides", nargs="*", help="extra overrides for the sweep (tests use a miniature)")
        if name == "run":
            s.add_argument("--out", type=Path, default=OUT)
            s.add_argument("--sweep-dir", type=Path, default=None, help="default: a temporary folder")
        else:
            s.add_argument("--committed", type=Path, default=OUT)
    args = p.parse_args(argv)
    try:
        if args.cmd == "render":
            render(args.sweep_dir, args.out)
            return 0
        with tempfile.TemporaryDirectory(prefix="nfebench-leaderboard-") as tmp:
            sweep_dir = getattr(args, "sweep_dir", None) or Path(tmp) / "sweep"
            seconds = sweep(sweep_dir, args.launcher, args.overrides)
            if args.cmd == "run":
                df = render(sweep_dir, args.out)
                timing = {"wall_s": round(seconds, 1), "launcher": args.launcher, "runs": int(
                    df.drop_duplicates(["model", "solver", "nfe"]).shape[0]), "cpu_count": os.cpu_count()}
                atomic_write_bytes(args.out / "timing.json", (json.dumps(timing, indent=2) + "\n").encode())
                print(f"leaderboard: {timing['runs']} runs in {seconds:.0f} s ({args.launcher}) -> {args.out}")
                return 0
            render(sweep_dir, Path(tmp) / "new")
            diff = compare(Path(tmp) / "new", args.committed)
    except NfebenchError as err:
        return report(err)
    if diff:
        print("\n".join(diff))
        return report(NfebenchError(f"the committed leaderboard ({args.committed}) differs from a fresh run "
                                    f"({sum(1 for d in diff if d.startswith('+') and not d.startswith('+++'))} "
                                    "changed lines above); run `make leaderboard` and commit the result"))
    print(f"leaderboard check: {', '.join(COMPARED)} match the committed ones ({args.committed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
