"""Metric suites by name: configs/metrics/<name>.yaml maps 1:1 to an entry here.

A suite is built once per run with (model, t_start, t_end, **options), receives every batch
of samples through ``update(samples, x_start)`` and reports ``result()`` and ``protocol()``.
``state()`` returns numpy arrays that ``merge_state(state)`` folds into another suite of the
same config, exactly: that is how shards of one run become one result.
"""
from __future__ import annotations

from sampling.errors import NfebenchError

from .exact import ExactMetrics
from .fid import FIDMetrics


class NoMetrics:
    def __init__(self, model, t_start, t_end):
        pass

    def update(self, samples, x_start):
        pass

    def state(self) -> dict:
        return {}

    def merge_state(self, state: dict) -> None:
        pass

    def result(self) -> dict:
        return {}

    def protocol(self) -> dict:
        return {"suite": "none"}


METRIC_SUITES = {"exact": ExactMetrics, "none": NoMetrics, "fid": FIDMetrics}


def build_metrics(cfg: dict, model, t_start: float, t_end: float):
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in METRIC_SUITES:
        raise NfebenchError(f"unknown metric suite '{name}'; valid: {', '.join(sorted(METRIC_SUITES))}")
    return METRIC_SUITES[name](model, t_start, t_end, **cfg)
