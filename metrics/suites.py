"""Metric suites by name: configs/metrics/<name>.yaml maps 1:1 to an entry here.

A suite is built once per run with (model, t_start, t_end, **options), receives every batch
of samples through ``update(samples, x_start)`` and reports ``result()`` and ``protocol()``.
``state()`` returns numpy arrays that ``merge_state(state)`` folds into another suite of the
same config, exactly: that is how shards of one run become one result.
"""
from __future__ import annotations

from common.registry import Registry

from .clean_fid import CleanFID
from .digits_fd import DigitsFDMetrics
from .exact import ExactMetrics
from .nfebench import NfebenchFID
from .torch_fidelity import TorchFidelityFID


class NoMetrics:
    def __init__(self, model, t_start, t_end):
        pass

    def update(self, samples, x_start, indices=None):
        pass

    def state(self) -> dict:
        return {}

    def merge_state(self, state: dict) -> None:
        pass

    def result(self) -> dict:
        return {}

    def protocol(self) -> dict:
        return {"suite": "none"}


SUITES = Registry("metric suite")
SUITES.register("none", NoMetrics)
SUITES.register("exact", ExactMetrics)
SUITES.register("digits_fd", DigitsFDMetrics)
SUITES.register("fid", NfebenchFID)           # one suite per FID backend, each in the module named after it
SUITES.register("fid_is", TorchFidelityFID)
SUITES.register("clean_fid", CleanFID)
FID_SUITES = ("fid", "fid_is", "clean_fid")


def metrics_config(cfg: dict) -> dict:
    """cfg["metrics"], with the model's default FID reference filled in when none is given.

    An image model config may carry ``fid_reference: {name, num_samples}``: ``name`` becomes
    ``metrics.reference`` when that is null, and ``num_samples`` (the sample count of the
    published protocol, e.g. 50000) is recorded as ``protocol_num_samples`` (configs/config.yaml
    also takes it as the default ``num_samples``): a record whose count differs says so.
    """
    mcfg = dict(cfg["metrics"])
    default = (cfg.get("model") or {}).get("fid_reference")
    if mcfg.get("name") in FID_SUITES and default:
        if mcfg.get("reference") is None:
            mcfg["reference"] = default.get("name")
        if mcfg.get("protocol_num_samples") is None:
            mcfg["protocol_num_samples"] = default.get("num_samples")
    return mcfg


def build_metrics(cfg: dict, model, t_start: float, t_end: float):
    cfg = dict(cfg)
    return SUITES.get(cfg.pop("name", None))(model, t_start, t_end, **cfg)
