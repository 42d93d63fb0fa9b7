"""The compute axis: MACs per call configuration (counted once with FlopCounterMode) and seconds per call,
recorded beside NFE (models/counter.py, launch/run.py)."""
import functools

import pytest
import torch

from launch import calibration
from launch.run import load_model, plan, sample_batches
from models.counter import ComputeTally, CountedDenoiser, merge_compute
from sampling.registry import SOLVERS, get_solver

from helpers import CHEAP_CALIBRATION, compose_cfg, gaussian, solver_defaults


@functools.lru_cache(maxsize=None)
def digits_unet():
    cfg = compose_cfg("model=digits_unet")
    return cfg["model"], load_model(cfg)


def run(model_cfg, model, solver, cache_dir, num_samples=2, batch_size=2):
    opts, schedule = solver_defaults(solver)
    opts.update(CHEAP_CALIBRATION.get(solver, {}))  # the identity is about sampling calls, not calibration's
    nfe = max(6, get_solver(solver).min_nfe(**{k: v for k, v in opts.items() if k != "name"}))
    cfg = {"nfe": nfe, "num_samples": num_samples, "batch_size": batch_size, "seed": 0, "sample_offset": 0,
           "t_end": None, "dtype": "float32", "model": model_cfg, "solver": dict(opts), "schedule": schedule,
           "calibration": {"dir": str(cache_dir)}}
    p, cpu = plan(cfg), torch.device("cpu")
    calibrated, _ = calibration.prepare(cfg, p, model, cpu)  # a solver's calibration calls are not its samples' cost
    return sample_batches(cfg, p, model, cpu, lambda *a: None, calibrated)


@pytest.mark.parametrize("solver", sorted(s for s in SOLVERS if not get_solver(s).model_needs))
def test_macs_are_nfe_times_macs_per_call_on_a_plain_network(solver, tmp_path, one_thread):
    stats = run(*digits_unet(), solver, tmp_path)
    c = stats.compute
    (config,) = c["macs_per_call"]  # a plain network: one configuration, every call the same cost
    assert config["kind"] == "full" and config["shape"] == [2, 1, 8, 8] and config["calls"] == stats.counted
    assert c["macs_total"] == stats.counted * config["macs_per_call"] > 0
    assert c["macs_per_sample"] == c["macs_total"] / 2
    assert c["seconds_per_call"] > 0 and c["timed_calls"] >= stats.counted - 1


@pytest.mark.parametrize("solver", sorted(s for s in SOLVERS if get_solver(s).model_needs))
def test_macs_per_sample_are_nfe_times_one_evaluation_when_rows_are_evaluated_apart(solver, tmp_path):
    # dlg evaluates each noise level's rows apart (CountedDenoiser.on_rows): calls differ in size, but
    # every NFE still evaluates each sample once
    cfg = compose_cfg("model=digits")
    stats = run(cfg["model"], load_model(cfg), solver, tmp_path, num_samples=4, batch_size=4)
    assert stats.compute["macs_per_sample"] == stats.counted * 2 * 64 * 1797


def test_analytic_models_count_their_matmuls_and_nothing_else():
    # gaussian: two products with the d x d eigenbasis per sample; digits: x against the 1797 centres
    # and the weights back onto them. Elementwise work is not counted (the record says so).
    g = gaussian(shape=(3, 8, 8))
    counter = CountedDenoiser(g, None)
    counter(torch.randn(5, 3, 8, 8, dtype=torch.float64), 0.5)
    assert counter.macs == 5 * 2 * 192 * 192
    digits = load_model(compose_cfg("model=digits"))
    counter = CountedDenoiser(digits, None)
    counter(torch.randn(4, 1, 8, 8, dtype=torch.float64), 0.5)
    assert counter.macs == 4 * 2 * 64 * 1797


def test_each_configuration_is_metered_once_per_model_and_the_other_calls_are_timed():
    g = gaussian(shape=(1, 4, 4))
    x4, x2 = torch.randn(4, 1, 4, 4), torch.randn(2, 1, 4, 4)
    first = CountedDenoiser(g, None)
    for x in (x4, x4, x4, x2):
        first(x, 0.3)
    assert sorted(first.calls_by.values()) == [1, 3]
    assert first.timed_calls(((4, 1, 4, 4), torch.float32, "full")) == 2  # the metered call is not timed
    assert first.timed_calls(((2, 1, 4, 4), torch.float32, "full")) == 0
    assert first.macs == 3 * 4 * 2 * 16 * 16 + 2 * 2 * 16 * 16
    second = CountedDenoiser(g, None)  # a later batch: the counts are already known
    second(x4, 0.3)
    assert second.timed_calls(((4, 1, 4, 4), torch.float32, "full")) == 1 and second.macs == 4 * 2 * 16 * 16
    tally = ComputeTally()
    tally.add(first)
    tally.add(second)
    rec = tally.record(num_samples=10)
    assert rec["macs_total"] == first.macs + second.macs and rec["macs_per_sample"] == rec["macs_total"] / 10
    assert [(c["config"], c["calls"], c["timed_calls"]) for c in rec["macs_per_call"]] == \
        [("full 2x1x4x4 float32", 1, 0), ("full 4x1x4x4 float32", 4, 3)]
    assert rec["macs_per_call"][0]["seconds_per_call"] is None and rec["macs_per_call"][1]["seconds_per_call"] > 0


def test_merged_compute_adds_calls_and_macs_and_pools_times():
    part = lambda calls, timed, s: {"macs_total": calls * 100, "macs_per_sample": 0, "timed_calls": timed,  # noqa: E731
                                    "seconds_per_call": s, "macs_counter": "x",
                                    "macs_per_call": [{"config": "full 4x1 float32", "calls": calls, "timed_calls": timed,
                                                       "macs_per_call": 100, "seconds_per_call": s}]}
    m = merge_compute([part(10, 9, 1.0), part(10, 10, 2.0)], num_samples=8)
    assert m["macs_total"] == 2000 and m["macs_per_sample"] == 250 and m["timed_calls"] == 19
    assert m["macs_per_call"][0]["calls"] == 20 and m["seconds_per_call"] == pytest.approx((9 + 20) / 19)


class _FakeEvent:
    """torch.cuda.Event's timing surface on a fake device clock (ms): record() stamps the clock, and the
    model below advances it as a kernel would; synchronize() is counted (a wait for the device)."""
    clock = 0.0
    waits = 0

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.stamp = None

    def record(self):
        self.stamp = _FakeEvent.clock

    def elapsed_time(self, end):
        assert self.stamp is not None and end.stamp is not None, "read before recorded"
        return end.stamp - self.stamp

    def synchronize(self):
        _FakeEvent.waits += 1


class _OnDevice(torch.Tensor):
    """A CPU tensor that says it is on a GPU: takes the counter's CUDA branch."""

    @property
    def is_cuda(self):
        return True


class _DeviceModel:
    """x0 = x / 2, spending 2.5 ms of the fake device clock per call."""
    noise, shape, prediction = None, (1, 2, 2), "x0"

    def __call__(self, x, t, cond=None):
        _FakeEvent.clock += 2.5
        return x * 0.5


def test_on_a_gpu_model_time_comes_from_events_read_once_after_the_batch(monkeypatch):
    """Issue 14's GPU goal, without a GPU: every timed call is bracketed by two CUDA events and nothing waits
    for the device during the batch (no torch.cuda.synchronize, no event synchronize); the events are read
    when the batch's seconds are asked for, waiting once, on the last one."""
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("torch.cuda.synchronize in the loop"))
    monkeypatch.setattr(_FakeEvent, "clock", 0.0)
    monkeypatch.setattr(_FakeEvent, "waits", 0)
    counter = CountedDenoiser(_DeviceModel(), budget=None)
    x = torch.ones(3, 1, 2, 2).as_subclass(_OnDevice)
    for k in range(6):
        x = counter(x, 1.0 - k / 10)
    assert _FakeEvent.waits == 0 and len(counter._events) == 5  # the first call is metered (MACs), not timed
    (config,) = counter.calls_by
    assert counter.seconds_by() == {config: pytest.approx(5 * 2.5e-3)}
    assert counter.timed_calls(config) == 5 and _FakeEvent.waits == 1
    tally = ComputeTally()
    tally.add(counter)
    assert tally.record(3)["seconds_per_call"] == pytest.approx(2.5e-3)
