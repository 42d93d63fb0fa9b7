"""Sweep cost per run, launcher=local against launcher=basic (issue 14, item 4) -> results/bench/sweep.md

    python -m launch.bench sweep [--quick]

The same sweep of small CPU runs (model=gaussian, default samples.png included) runs with each
launcher into a fresh directory, one after another, as a user would run it: wall-clock time of
the whole `python launch.py -m ...` command, divided by the number of runs. Contenders alternate
within each round; the table gives the median over rounds. `local` runs with 1 worker (the same
CPU share as `basic`) and with 2 workers; every process gets OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.paths import REPO

from .report import Goal, write

SWEEP = ["model=gaussian", "num_samples=32", "solver=ddim,euler,heun,dpmpp,ipndm,unipc", "nfe=5,10,20,40"]
QUICK_SWEEP = ["model=gaussian", "num_samples=32", "solver=ddim,dpmpp", "nfe=5,10"]
ROUNDS = 1
GOAL = 1.5
CONTENDERS = {
    "basic": ["launcher=basic"],
    "local, 1 worker": ["launcher=local", "hydra.launcher.cpu_workers=1"],
    "local, 2 workers": ["launcher=local", "hydra.launcher.cpu_workers=2"],
}


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # includes the workers the launcher waited for
    return ru.ru_utime + ru.ru_stime


def run_count(sweep: list[str]) -> int:
    return math.prod(len(o.split("=", 1)[1].split(",")) for o in sweep)


def sweep_seconds(sweep: list[str], extra: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the launcher and all its workers) of one sweep."""
    # one torch thread everywhere: a launcher's cost, not thread oversubscription on a busy machine
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    runs = run_count(sweep)
    with tempfile.TemporaryDirectory() as d:
        t0, c0 = time.perf_counter(), _children_cpu()
        r = subprocess.run([sys.executable, str(REPO / "launch.py"), "-m", *sweep, *extra, f"hydra.sweep.dir={d}"],
                           cwd=REPO, capture_output=True, text=True, env=env)
        seconds, cpu = time.perf_counter() - t0, _children_cpu() - c0
        if r.returncode != 0 or f"sweep summary: {runs} runs: {runs} done" not in r.stdout:
            raise SystemExit(f"sweep failed ({' '.join(extra)}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        if len(list(Path(d).glob("*/record.json"))) != runs or len(list(Path(d).glob("*/samples.png"))) != runs:
            raise SystemExit(f"sweep left missing records or grids ({' '.join(extra)})")
    return seconds, cpu


def measure(sweep: list[str], rounds: int) -> dict[str, list[tuple[float, float]]]:
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in CONTENDERS}
    for _ in range(rounds):
        for name, extra in CONTENDERS.items():
            times[name].append(sweep_seconds(sweep, extra))
            print(f"sweep {name}: {times[name][-1][0]:.1f} s wall, {times[name][-1][1]:.1f} s CPU", flush=True)
    return times


def medians(times: dict[str, list[tuple[float, float]]]) -> dict[str, dict[str, float]]:
    return {k: {"wall_s": statistics.median(w for w, _ in v), "cpu_s": statistics.median(c for _, c in v)}
            for k, v in times.items()}


def body(sweep: list[str], med: dict, rounds: int) -> list[str]:
    runs, base = run_count(sweep), med["basic"]
    lines = ["## Launchers", "",
             f"Sweep: `python launch.py -m {' '.join(sweep)}` ({runs} runs, samples.png drawn for each): wall-clock "
             "time of the whole command and CPU time of it and every worker it started (getrusage of waited-for "
             f"children), `OMP_NUM_THREADS=1` for every process, median over {rounds} round(s); contenders alternate "
             "within a round. On a shared machine the CPU column is the steadier one.", "",
             "| launcher | wall s | wall s per run | wall per run / basic | CPU s | CPU per run / basic |",
             "|---|---|---|---|---|---|"]
    for k, m in med.items():
        lines.append(f"| {k} | {m['wall_s']:.1f} | {m['wall_s'] / runs:.2f} | {m['wall_s'] / base['wall_s']:.2f}x | "
                     f"{m['cpu_s']:.1f} | {m['cpu_s'] / base['cpu_s']:.2f}x |")
    return lines + [""]


def run(quick: bool = False, out=None) -> list[Goal]:
    sweep = QUICK_SWEEP if quick else SWEEP
    med = medians(measure(sweep, ROUNDS))
    worst = max(m["wall_s"] for k, m in med.items() if k.startswith("local")) / med["basic"]["wall_s"]
    goals = [Goal(f"a local sweep of small runs <= {GOAL}x the basic launcher's wall time per run (worst of "
                  f"{', '.join(k for k in med if k.startswith('local'))})", worst, GOAL)]
    settings = {"sweep": " ".join(sweep), "runs": run_count(sweep), "rounds": ROUNDS, "OMP_NUM_THREADS": 1,
                "quick": quick}
    path = write("sweep", "Sweep cost per run: launcher=local vs launcher=basic", settings, goals,
                 body(sweep, med, ROUNDS), {"medians": med}, out)
    print(f"wrote {path}", flush=True)
    return goals
