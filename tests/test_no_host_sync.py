"""No host synchronisation inside a batch's solver loop (issue 14's GPU goal), checked on the CPU.

On a GPU a host sync is an op whose result the host must read: .item(), float()/bool() of a tensor,
torch.equal, nonzero, boolean-mask indexing. CPU tensors dispatch the same aten ops, so a dispatch mode
that records them while launch.run.sample_batch runs finds every sync a GPU run would make. The network
itself (``predict``) is left out: a model's own arithmetic is the model's business, not the loop's.

Every registered solver with its config's defaults, plus the variants that take other code paths, through
launch.run's own plan(), calibration and sample_batch, as a run samples a batch.
"""
from __future__ import annotations

import pytest
import torch

from launch import calibration
from launch.run import load_model, plan
from sampling.registry import get_solver

from helpers import SyncRecorder, compose_cfg, recorded_batch, solver_cases


VARIANTS = {
    "dpmpp": [{"order": 3}, {"method": "singlestep", "order": 3}],
    "dpm_solver": [{"method": "multistep", "order": 3}],
    "unipc": [{"order": 2, "variant": "bh2"}],
    "deis": [{"basis": "logrho"}],
    "pndm": [{"method": "s_pndm"}, {"method": "f_pndm"}],
    "score_sde_pc": [{"n_corrector": 2, "predictor": "euler_maruyama"}],
    "heun": [{"S_churn": 10}],
    "euler": [{"S_churn": 10}],
    "ddim": [{"eta": 1.0}],
    "time_shift": [{"base": "ipndm"}],
    "dlg": [{"chains": "persistent", "num_chains": 2}],
    "dpm_solver_v3": [{"degenerated": True}],
    "hb": [{"warmup": "pseudo_heun"}],
    "ghvb": [{"warmup": "pseudo_heun"}],
}
# dlg's samples sit at their own noise levels and the model takes one level per call, so each sweep asks the
# host which levels hold rows (sampling/solvers/dlg.py:_by_level): one unique and one row lookup per level, each
# a sync; nothing else may sync
LEVEL_GROUPING = {"dlg": {"aten._unique2.default", "aten.nonzero.default"}}
MODEL = {"family": "gaussian", "shape": [1, 4, 4], "noise_schedule": {"name": "vp_linear"}, "dtype": "float32"}


def _batch(name, opts, schedule, device, tmp_path):
    """(samples, counter, recorder) of a run's second batch of this config on the analytic model, its network
    (predict) not recorded."""
    cfg = {"nfe": max(10, get_solver(name).min_nfe(**{k: v for k, v in opts.items() if k != "name"})),
           "num_samples": 3, "batch_size": 3, "seed": 0, "sample_offset": 0, "t_end": None, "dtype": "float32",
           "model": dict(MODEL), "solver": dict(opts), "schedule": dict(schedule), "calibration": {"dir": str(tmp_path)}}
    return _analytic_batch(cfg, device)


def _analytic_batch(cfg, device):
    model, recorder = load_model(cfg), SyncRecorder()
    model.predict = recorder.unrecorded(model.predict)  # the analytic network's own arithmetic is not the loop's
    calibrated = calibration.prepare(cfg, plan(cfg), model, torch.device("cpu"))[0]
    return recorded_batch(cfg, model, device, recorder, calibrated)


@pytest.mark.parametrize("name,opts,schedule", list(solver_cases(VARIANTS)))
def test_a_batch_makes_no_host_sync(name, opts, schedule, tmp_path):
    _, counter, recorder = _batch(name, opts, schedule, torch.device("cpu"), tmp_path)
    allowed = LEVEL_GROUPING.get(name, set())
    assert [s for s in recorder.syncs if s not in allowed] == [], \
        f"{name}: host syncs inside the batch: {sorted(set(recorder.syncs))}"
    if allowed:  # at most one grouping per model call (a sweep makes one or more, one per level)
        assert 0 < recorder.syncs.count("aten._unique2.default") <= counter.network_evals + counter.setup_evals


@pytest.mark.parametrize("name,opts,schedule", [c for c in solver_cases(VARIANTS) if c.values[0] not in LEVEL_GROUPING])
def test_on_another_device_a_batch_copies_nothing_blocking(name, opts, schedule, tmp_path):
    """The same batch on the "meta" device (shapes only, no values: a read on the host would fail): every
    copy between the host and the device is one that does not wait for it (the noise draws, the labels)."""
    x, _, recorder = _batch(name, opts, schedule, torch.device("meta"), tmp_path)
    assert x.device == torch.device("meta")
    assert recorder.syncs == [], f"{name}: blocking copies: {recorder.syncs}"


def test_on_another_device_a_teleported_batch_copies_nothing_blocking(tmp_path):
    """The teleport's Gaussian statistics go to the device once per run, not with every batch."""
    cfg = compose_cfg("model=gaussian", "teleport.skip=0.6", "solver=dpmpp", "nfe=10", "num_samples=3",
                      "batch_size=3", f"calibration.dir={tmp_path}")
    assert plan(cfg).teleport.need
    x, _, recorder = _analytic_batch(cfg, torch.device("meta"))
    assert x.device == torch.device("meta") and recorder.syncs == []


class _Syncing(torch.nn.Module):
    def forward(self, x):
        return x * float(x.sum())


def test_the_recorder_sees_a_host_sync_outside_the_network():
    """The checks can fail: .item(), a bool of a tensor and a mask index are each recorded; the same inside an
    nn.Module's call or a function wrapped as unrecorded are not, and the module hooks are gone afterwards."""
    recorder = SyncRecorder()
    x = torch.arange(4.0)
    with recorder:
        x.sum().item()
        bool(x.max() > 1)
        x[x > 1]
        x * 2
        _Syncing()(x)
        recorder.unrecorded(lambda v: v.sum().item())(x)
        x.to("meta")
        x.to("meta", non_blocking=True)
        torch.empty(4, device="meta").copy_(x)
        torch.as_tensor([1.0, 2.0], device="meta")
        torch.as_tensor([1.0, 2.0])
    assert recorder.syncs == ["aten._local_scalar_dense.default", "aten._local_scalar_dense.default",
                              "aten.index.Tensor", "aten._to_copy.default", "aten.copy_.default",
                              "torch.as_tensor onto meta"]
    _Syncing()(x)
    assert recorder._depth == 0
