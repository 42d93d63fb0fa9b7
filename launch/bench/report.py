"""What every bench part shares: thread-CPU timing of interleaved contenders, medians of per-round
ratios, the goal table of issue 14, and one writer for results/bench/<part>.md and .json."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from common.files import atomic_write_bytes
from common.paths import REPO

OUT = REPO / "results" / "bench"

# glibc malloc pinned for the whole bench (the bench re-execs itself with these, see __main__): one
# arena, and the mmap/trim thresholds fixed at what glibc's dynamic rule reaches in a long-running
# process (mmap threshold ceiling 32 MiB on 64-bit, trim = 2 x mmap), so that every tensor of the
# bench comes from the heap in every contender and run, instead of depending on the allocation history.
PINNED_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
              "MALLOC_TRIM_THRESHOLD_": str(64 << 20), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def allocator_pinned() -> bool:
    return all(os.environ.get(k) == v for k, v in PINNED_ENV.items())


def allocator_note() -> str:
    if allocator_pinned():
        return ("allocator pinned: the bench re-exec'd itself in a fresh process with "
                + " ".join(f"{k}={v}" for k, v in PINNED_ENV.items()))
    return "allocator NOT pinned (glibc defaults, dynamic mmap threshold): numbers depend on allocation history"


# --- timing ------------------------------------------------------------------------------------------

Prepare = Callable[[], Callable[[], object]]  # untimed set-up (fresh inputs) -> the timed call


def thread_seconds(go: Callable[[], object]) -> float:
    """CPU time of this thread only: other processes on a shared machine do not count."""
    t0 = time.thread_time()
    go()
    return time.thread_time() - t0


def interleaved(contenders: dict[str, Prepare], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Per-round thread-CPU seconds of each contender; within a round every contender runs once,
    in an order rotated each round so that none always follows the same neighbour."""
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t = thread_seconds(contenders[name]())
            if r >= warmup:
                times[name].append(t)
    return times


def round_ratios(num: list[float], den: list[float], num_scale: float = 1.0, den_scale: float = 1.0) -> list[float]:
    """Per-round ratios (num[r] / num_scale) / (den[r] / den_scale); scales are e.g. NFE per call."""
    if len(num) != len(den) or not num:
        raise ValueError(f"need the same, non-zero number of rounds; got {len(num)} and {len(den)}")
    return [(a / num_scale) / (b / den_scale) for a, b in zip(num, den)]


def median_ratio(num: list[float], den: list[float], num_scale: float = 1.0, den_scale: float = 1.0) -> float:
    """The median over rounds of per-round ratios: a slow round slows both sides of its ratio."""
    return statistics.median(round_ratios(num, den, num_scale, den_scale))


# --- goals -------------------------------------------------------------------------------------------

@dataclass
class Goal:
    """One goal of issue 14: met when value <= limit; value None means not measured (with why)."""
    goal: str
    value: float | None
    limit: float
    unit: str = "x"
    why_not_measured: str = ""

    @property
    def status(self) -> str:
        if self.value is None:
            return "not measured"
        return "met" if self.value <= self.limit else "NOT MET"


def goal_table(goals: list[Goal]) -> list[str]:
    lines = ["| goal (issue 14) | measured | limit | status |", "|---|---|---|---|"]
    for g in goals:
        measured = f"{g.value:.3g}{g.unit}" if g.value is not None else f"– ({g.why_not_measured})"
        lines.append(f"| {g.goal} | {measured} | {g.limit:g}{g.unit} | {g.status} |")
    return lines


# --- results -----------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import torch

    meta = {"host": platform.node(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_average_1min": round(os.getloadavg()[0], 2), "allocator": allocator_note()}
    try:
        from importlib.metadata import version

        meta["diffusers"] = version("diffusers")
    except Exception:  # diffusers is optional for parts that do not compare against it
        pass
    return meta


def write(part: str, title: str, settings: dict, goals: list[Goal], body: list[str], data: dict,
          out: Path | None = None) -> Path:
    """results/bench/<part>.md (what a reader needs) and <part>.json (everything measured)."""
    out = Path(out or OUT)
    meta = machine()
    lines = [f"# {title}", "", f"`python -m launch.bench {part}` (also `make bench`) on {meta['host']}: "
             f"{meta['cpu']}, {meta['cpus']} CPUs, python {meta['python']}, torch {meta['torch']}"
             + (f", diffusers {meta['diffusers']}" if "diffusers" in meta else "") + f", {meta['date']}, "
             f"1-min load average {meta['load_average_1min']}.", "", f"{meta['allocator']}.", "",
             *([f"The machine was busy (load {meta['load_average_1min']} on {meta['cpus']} CPUs): wall-clock "
                "numbers are inflated; thread-CPU-time numbers much less so.", ""]
               if meta["load_average_1min"] > (meta["cpus"] or 1) else []),
             "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".", "", "## Goals", "",
             *goal_table(goals), "", *body]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"{part}.md", ("\n".join(lines).rstrip() + "\n").encode())
    blob = {"meta": meta, "settings": settings, "goals": [{**asdict(g), "status": g.status} for g in goals], **data}
    atomic_write_bytes(out / f"{part}.json", (json.dumps(blob, indent=2) + "\n").encode())
    return out / f"{part}.md"
