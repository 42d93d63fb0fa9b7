"""The calibration stage (launch/calibration.py): cache key, checksum, modes, counted cost.

These use a toy Need on the analytic models; the calibrated solvers' own tests run it through launch.py.
"""
import dataclasses
import functools
import json
import multiprocessing
import time

import numpy as np
import pytest
import torch

from common.errors import NfebenchError
from launch import calibration
from launch.run import load_model, plan
from sampling.calibration import Need
from helpers import compose_cfg, launch


def _mean_prediction(model, device):
    # three counted model calls: the mean x0 prediction at three noise levels
    x = torch.zeros((2, *model.shape), dtype=torch.float64, device=device)
    return {"x0": np.stack([model(x, t).mean(0).numpy() for t in (0.2, 0.5, 0.8)])}


def _setup(tmp_path, mode="auto", settings=None, model="digits"):
    cfg = compose_cfg(f"model={model}", "nfe=6", f"calibration.dir={tmp_path}", f"calibration.mode={mode}")
    need = Need("toy", settings or {"grid": [0.2, 0.5, 0.8]}, _mean_prediction)
    return cfg, dataclasses.replace(plan(cfg), calibration=need), load_model(cfg)


def test_computed_once_then_cached_with_its_cost(tmp_path):
    cfg, p, model = _setup(tmp_path)
    arrays, info = calibration.prepare(cfg, p, model, "cpu")
    assert info["toy"]["status"] == "computed" and info["toy"]["nfe"] == 3
    assert info["toy"]["settings"] == {"grid": [0.2, 0.5, 0.8]}
    again, info2 = calibration.prepare(cfg, p, model, "cpu")
    assert info2["toy"]["status"] == "hit" and info2["toy"]["nfe"] == 3  # the cost it took, not 0
    np.testing.assert_array_equal(again["toy"]["x0"], arrays["toy"]["x0"])
    assert info2["toy"]["file"] == info["toy"]["file"]


def test_key_changes_with_settings_and_model(tmp_path):
    cfg, p, model = _setup(tmp_path)
    keys = {calibration.prepare(cfg, p, model, "cpu")[1]["toy"]["key"]}
    cfg, p, model = _setup(tmp_path, settings={"grid": [0.2, 0.5, 0.9]})
    keys.add(calibration.prepare(cfg, p, model, "cpu")[1]["toy"]["key"])
    cfg, p, model = _setup(tmp_path, model="gaussian")
    keys.add(calibration.prepare(cfg, p, model, "cpu")[1]["toy"]["key"])
    assert len(keys) == 3


def test_network_fingerprint_is_its_weights(tmp_path):
    net = torch.nn.Conv2d(1, 1, 3)
    model = type("M", (), {"_nets": [net], "prediction": "eps", "shape": (1, 8, 8),
                           "noise": type("N", (), {"describe": lambda self: {"name": "vp"}})()})()
    cfg = {"model": {"checkpoint": "/somewhere/a"}}
    a = calibration.fingerprint(model, cfg)
    assert a == calibration.fingerprint(model, {"model": {"checkpoint": "/elsewhere/b"}})  # not where it sits
    with torch.no_grad():
        next(net.parameters()).add_(1e-3)
    assert calibration.fingerprint(model, cfg) != a


def test_corrupt_or_stale_file_is_rebuilt(tmp_path):
    cfg, p, model = _setup(tmp_path)
    path = tmp_path / "toy"
    first = calibration.prepare(cfg, p, model, "cpu")[1]["toy"]["file"]
    data = bytearray(open(first, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(first, "wb").write(bytes(data))
    assert calibration.prepare(cfg, p, model, "cpu")[1]["toy"]["status"] == "computed"
    # a file whose arrays were edited fails its checksum too
    with np.load(first) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x0"] = arrays["x0"] + 1
    np.savez(first, **arrays)
    assert calibration.prepare(cfg, p, model, "cpu")[1]["toy"]["status"] == "computed"
    assert len(list(path.glob("*.npz"))) == 1


def test_require_fails_in_one_line_then_recompute_overwrites(tmp_path):
    cfg, p, model = _setup(tmp_path, mode="require")
    with pytest.raises(NfebenchError, match=r"calibration 'toy' is not cached .*calibrate_only=true"):
        calibration.prepare(cfg, p, model, "cpu")
    assert not (tmp_path / "toy").exists()
    calibration.prepare(*_setup(tmp_path)[:3], "cpu")
    assert calibration.prepare(cfg, p, model, "cpu")[1]["toy"]["status"] == "hit"
    cfg, p, model = _setup(tmp_path, mode="recompute")
    info = calibration.prepare(cfg, p, model, "cpu")[1]["toy"]
    assert info["status"] == "computed"
    assert json.loads(str(np.load(info["file"])["meta"]))["created_at"] == info["created_at"]


def _slow_calibration(model, device, log):
    with open(log, "a") as f:
        f.write("computing\n")
    time.sleep(1.0)  # long enough for the other job to arrive while this one computes
    return _mean_prediction(model, device)


def _job(tmp_path, log, queue):
    cfg, p, model = _setup(tmp_path)
    p = dataclasses.replace(p, calibration=Need("toy", {"grid": [0.2, 0.5, 0.8]},
                                                functools.partial(_slow_calibration, log=log)))
    queue.put(calibration.prepare(cfg, p, model, "cpu")[1]["toy"]["status"])


def test_concurrent_jobs_compute_it_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")  # fork after torch and hydra have started can deadlock
    queue, log = ctx.Queue(), tmp_path / "log"
    jobs = [ctx.Process(target=_job, args=(tmp_path, log, queue)) for _ in range(2)]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join(60)
    assert sorted(queue.get(timeout=5) for _ in jobs) == ["computed", "hit"]
    assert log.read_text() == "computing\n"


def test_no_need_no_work(tmp_path):
    cfg = compose_cfg("model=digits", f"calibration.dir={tmp_path}")
    assert calibration.prepare(cfg, plan(cfg), load_model(cfg), "cpu") == ({}, {})
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("override, message", [
    ("calibration.mode=sometimes", "unknown calibration.mode 'sometimes'; valid: auto, require, recompute"),
    ("calibrate_only=true", "calibrate_only=true but solver 'dpmpp' with these options needs no calibration"),
    ("calibrate_only=3", "calibrate_only must be true or false; got 3"),
])
def test_bad_calibration_options_fail_in_one_line(tmp_path, override, message):
    r = launch("model=digits", "nfe=4", override, f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"nfebench: error: {message}"]
    assert not (tmp_path / "run" / "record.json").exists()
