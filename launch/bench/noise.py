"""Batch-invariant noise (sampling.seeds.SampleNoise: one generator per sample, EDM style) against one
batched torch.randn, in the same process and rounds; plus the per-batch set-up (a generator per sample
seeded from (seed, index)) that a run pays once per batch."""
from __future__ import annotations

import itertools

import numpy as np
import torch

from sampling.seeds import SampleNoise

from .report import Goal, interleaved, median_ratio, write

SHAPES = {"64x3x32x32": (64, 3, 32, 32), "16x3x256x256": (16, 3, 256, 256)}
ROUNDS = {"64x3x32x32": 200, "16x3x256x256": 30}
QUICK_ROUNDS = {"64x3x32x32": 20, "16x3x256x256": 4}
GOAL = 1.5


def contenders(shape) -> dict:
    batch, dims = shape[0], shape[1:]
    first = itertools.count(0, batch)  # every set-up seeds a new batch of indices, as a run's batch loop does

    def randn():
        g = torch.Generator().manual_seed(0)
        return lambda: torch.randn(shape, generator=g)

    def draw():
        rng = SampleNoise(0, range(batch), dims, dtype=torch.float32)
        return rng.draw

    def fill():
        gens = [torch.Generator().manual_seed(i) for i in range(batch)]
        buf = torch.empty(shape)

        def go():
            for row, g in zip(buf, gens):
                row.normal_(generator=g)
            return buf
        return go

    def setup():
        lo = next(first)
        return lambda: SampleNoise(0, range(lo, lo + batch), dims, dtype=torch.float32)

    return {"one batched randn": randn, "SampleNoise.draw": draw,
            "per-sample normal_ into one buffer": fill, "SampleNoise set-up": setup}


def measure(shape, rounds: int) -> dict:
    times = interleaved(contenders(shape), rounds)
    base = times["one batched randn"]
    return {"rounds": rounds, "ms": {k: 1e3 * float(np.median(v)) for k, v in times.items()},
            "vs_randn": {k: median_ratio(v, base) for k, v in times.items()}}


def run(quick: bool = False, out=None) -> list[Goal]:
    torch.set_num_threads(1)
    rounds = QUICK_ROUNDS if quick else ROUNDS
    res = {label: measure(shape, rounds[label]) for label, shape in SHAPES.items()}
    goals = [Goal(f"batch-invariant noise <= {GOAL}x one batched randn at {label}",
                  r["vs_randn"]["SampleNoise.draw"], GOAL) for label, r in res.items()]
    lines = ["## Per draw", "", "Thread CPU time per call, median over rounds; `/ randn` is the median of per-round "
             "ratios to one `torch.randn(batch shape, generator=g)`. The set-up row is a new SampleNoise for a new "
             "batch of indices (a generator per sample seeded from (seed, index)): paid once per batch, not per step.",
             "", "| | " + " | ".join(f"{k} ms | {k} / randn" for k in res) + " |",
             "|---|" + "---|---|" * len(res)]
    for name in next(iter(res.values()))["ms"]:
        lines.append(f"| {name} | " + " | ".join(f"{r['ms'][name]:.3f} | {r['vs_randn'][name]:.2f}x"
                                                 for r in res.values()) + " |")
    lines += ["", "`per-sample normal_ into one buffer` is shown for comparison: the same per-sample streams, "
              "written into a preallocated batch instead of stacked.", ""]
    settings = {"dtype": "float32 draws", "torch threads": 1, "clock": "thread CPU time",
                "rounds": {k: rounds[k] for k in SHAPES}, "quick": quick}
    path = write("noise", "Batch-invariant noise against one batched randn", settings, goals, lines, {"shapes": res},
                 out)
    for label, r in res.items():
        print(f"noise {label}: draw {r['vs_randn']['SampleNoise.draw']:.2f}x randn, "
              f"set-up {r['ms']['SampleNoise set-up']:.2f} ms per batch", flush=True)
    print(f"wrote {path}", flush=True)
    return goals
