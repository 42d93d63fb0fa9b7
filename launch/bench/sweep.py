"""Sweep cost per run, launcher=local against launcher=basic (issue 14, item 4) -> results/bench/sweep.md

    python -m launch.bench_sweep [--rounds 1]

The same sweep of small CPU runs (model=gaussian, default samples.png included) runs with each
launcher into a fresh directory, one after another, as a user would run it: wall-clock time of
the whole `python launch.py -m ...` command, divided by the number of runs. Contenders alternate
within each round; the table gives the median over rounds. `local` runs with 1 worker (the same
CPU share as `basic`) and with 2 workers; every process gets OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common.files import atomic_write_bytes
from common.paths import REPO

OUT = REPO / "results" / "bench" / "sweep.md"
SWEEP = ["model=gaussian", "num_samples=32", "solver=ddim,euler,heun,dpmpp,ipndm,unipc", "nfe=5,10,20,40"]
RUNS = 6 * 4
CONTENDERS = {
    "basic": ["launcher=basic"],
    "local, 1 worker": ["launcher=local", "hydra.launcher.cpu_workers=1"],
    "local, 2 workers": ["launcher=local", "hydra.launcher.cpu_workers=2"],
}


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # includes the workers the launcher waited for
    return ru.ru_utime + ru.ru_stime


def sweep_seconds(extra: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the launcher and all its workers) of one sweep."""
    # one torch thread everywhere: a launcher's cost, not thread oversubscription on a busy machine
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as d:
        t0, c0 = time.perf_counter(), _children_cpu()
        r = subprocess.run([sys.executable, str(REPO / "launch.py"), "-m", *SWEEP, *extra, f"hydra.sweep.dir={d}"],
                           cwd=REPO, capture_output=True, text=True, env=env)
        seconds, cpu = time.perf_counter() - t0, _children_cpu() - c0
        if r.returncode != 0 or f"sweep summary: {RUNS} runs: {RUNS} done" not in r.stdout:
            raise SystemExit(f"sweep failed ({' '.join(extra)}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        if len(list(Path(d).glob("*/record.json"))) != RUNS or len(list(Path(d).glob("*/samples.png"))) != RUNS:
            raise SystemExit(f"sweep left missing records or grids ({' '.join(extra)})")
    return seconds, cpu


def measure(rounds: int) -> dict[str, list[tuple[float, float]]]:
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in CONTENDERS}
    for _ in range(rounds):
        for name, extra in CONTENDERS.items():
            times[name].append(sweep_seconds(extra))
            print(f"{name}: {times[name][-1][0]:.1f} s wall, {times[name][-1][1]:.1f} s CPU", flush=True)
    return times


def report(times: dict[str, list[tuple[float, float]]]) -> str:
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    load = os.getloadavg()[0]
    lines = ["# Sweep cost per run: launcher=local vs launcher=basic", "",
             f"`python -m launch.bench_sweep` on {platform.node()} ({os.cpu_count()} cores), "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, python {platform.python_version()}.", "",
             f"Sweep: `python launch.py -m {' '.join(SWEEP)}` ({RUNS} runs, samples.png drawn for each): wall-clock "
             "time of the whole command and CPU time of it and every worker it started (getrusage of waited-for "
             f"children), `OMP_NUM_THREADS=1` for every process, median over {len(times['basic'])} round(s); contenders alternate within a round. "
             f"Load average at the end: {load:.1f}; on a shared machine the CPU column is the steadier one.", "",
             "| launcher | wall s | wall s per run | wall per run / basic | CPU s | CPU per run / basic |",
             "|---|---|---|---|---|---|"]
    for k in times:
        lines.append(f"| {k} | {wall[k]:.1f} | {wall[k] / RUNS:.2f} | {wall[k] / wall['basic']:.2f}x | {cpu[k]:.1f} | "
                     f"{cpu[k] / cpu['basic']:.2f}x |")
    lines += ["", "Goal (issue 14): a local sweep of small runs costs <= 1.5x the basic launcher's wall time per run."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.bench_sweep", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    text = report(measure(args.rounds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
