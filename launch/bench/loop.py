"""The non-model share of a real run's sampling loop, (sample_s - model_s) / sample_s, read from the record
of `python launch.py model=digits_unet solver=dpmpp nfe=10 num_samples=1000` (one torch thread)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common.paths import REPO

from .report import Goal, write

RUN = ["model=digits_unet", "solver=dpmpp", "nfe=10", "num_samples=1000"]
REPEATS, QUICK_REPEATS = 3, 1
GOAL = 5.0  # percent


def loop_share(record: dict) -> float | None:
    """(sample_s - model_s) / sample_s from a record's timing; None for records that predate
    `timing.sample_s` (they mix imports and loading into `rest_s`)."""
    timing = record["timing"]
    if "sample_s" not in timing:
        return None
    return (timing["sample_s"] - timing["model_s"]) / timing["sample_s"]


def one_run() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, str(REPO / "launch.py"), *RUN, f"hydra.run.dir={d}"], cwd=REPO,
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise SystemExit(f"bench loop: the run failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        return json.loads((Path(d) / "record.json").read_text())


def run(quick: bool = False, out=None) -> list[Goal]:
    records = [one_run() for _ in range(QUICK_REPEATS if quick else REPEATS)]
    shares = [loop_share(r) for r in records]
    timings = [r["timing"] for r in records]
    measured = None if None in shares else 100 * statistics.median(shares)
    goal = Goal(f"non-model share of the sampling loop <= {GOAL:g}% ({' '.join(RUN)})", measured, GOAL, unit="%",
                why_not_measured="the record has no timing.sample_s (code before the runplan change)")
    keys = sorted({k for t in timings for k in t})
    lines = ["## Runs", "", f"`python launch.py {' '.join(RUN)}` in a fresh directory, `OMP_NUM_THREADS=1`, "
             f"{len(records)} time(s); the goal is on the median share. Timing keys of each record (s):", "",
             "| run | " + " | ".join(keys) + " | (sample_s - model_s) / sample_s |", "|---" * (len(keys) + 2) + "|"]
    for i, (t, s) in enumerate(zip(timings, shares)):
        lines.append(f"| {i + 1} | " + " | ".join(f"{t[k]:.3f}" if k in t else "–" for k in keys)
                     + f" | {'–' if s is None else f'{s:.2%}'} |")
    if measured is None:
        lines += ["", "These records predate `timing.sample_s`/`timing.load_s`: `rest_s` mixes imports and model "
                  "loading with the loop, so the share is not measurable from them."]
    settings = {"run": " ".join(RUN), "torch threads": 1, "repeats": len(records), "quick": quick}
    path = write("loop", "Non-model share of the sampling loop", settings, [goal], lines,
                 {"timings": timings, "shares": shares}, out)
    print(f"loop: {goal.status}: " + ("-" if goal.value is None else f"{goal.value:.2f}%") + f"; wrote {path}", flush=True)
    return [goal]
