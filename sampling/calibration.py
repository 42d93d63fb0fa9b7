"""What a calibrated method asks of the run: numbers computed from the model before sampling.

DPM-Solver-v3's empirical model statistics, DC-Solver's compensation ratios and teleportation's
data statistics are each a ``Need``: a kind, the settings that change the result, and how to
compute it. The run (launch/calibration.py) finds the arrays in a checksummed cache keyed by
(model fingerprint, kind, settings) or computes them once, counts the model calls that cost, and
hands them to the solver as ``calibration=``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Need:
    kind: str
    settings: dict  # JSON-able; with the model's fingerprint it keys the cache
    # (model) -> arrays; ``model`` is a CountedDenoiser without a budget, so every call is counted
    compute: Callable[..., dict[str, np.ndarray]] = field(compare=False)
