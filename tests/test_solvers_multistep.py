"""The shared multistep pieces (sampling/solvers/multistep.py): the divided-difference weights, the
in-place update, and the per-grid cache of host-side weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import gaussian
from sampling.registry import get_solver
from sampling.schedules import make_noise_schedule
from sampling.seeds import SampleNoise
from sampling.solvers.grid import grid_coeffs
from sampling.solvers.multistep import combine, on_predictions
from sampling.timesteps import make_grid


@pytest.mark.parametrize("order", [1, 2, 3])
def test_on_predictions_is_the_divided_difference_update(order):
    """The host weights equal c0 D0 + c1 D1 + c2 D2 evaluated on tensors as DPM-Solver's multistep code
    writes it, on a grid with unequal steps (so r0 != r1 != 1)."""
    noise = make_noise_schedule("vp_linear")
    g = grid_coeffs(noise, noise.t_of_lam(np.array([-3.0, -2.5, -1.3, 0.4, 2.0])))
    k, c0, c1, c2 = 3, 0.7, -0.3, 0.45
    m0, m1, m2 = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    h = g.lam[k + 1] - g.lam[k]
    r0, r1 = (g.lam[k] - g.lam[k - 1]) / h, (g.lam[k - 1] - g.lam[k - 2]) / h
    D1_0, D1_1 = (m0 - m1) / r0, (m1 - m2) / r1
    expected = {1: c0 * m0, 2: c0 * m0 + c1 * D1_0,
                3: c0 * m0 + c1 * (D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)) + c2 * (D1_0 - D1_1) / (r0 + r1)}[order]
    w = on_predictions(g, k, order, c0, c1, c2)
    assert len(w) == order and all(type(v) is float for v in w)
    assert torch.allclose(sum(wj * m for wj, m in zip(w, (m0, m1, m2))), expected, rtol=1e-13, atol=1e-13)


def test_combine_writes_a_new_buffer():
    x, a, b = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    before = [t.clone() for t in (x, a, b)]
    out = combine(0.5, x, (2.0, 0.0, -1.0), [a, b, b])
    assert torch.equal(out, 0.5 * x + 2.0 * a - 1.0 * b)
    assert all(torch.equal(t, t0) for t, t0 in zip((x, a, b), before))


class Recording:
    """Keeps a copy of every input and output, to check later that the solver changed none of them."""

    def __init__(self, model):
        self.model, self.seen = model, []

    def __call__(self, x, t):
        out = self.model(x, t)
        self.seen.append((x, x.clone(), out, out.clone()))
        return out


CASES = [("dpmpp", {}), ("dpmpp", {"order": 3}), ("dpmpp", {"method": "singlestep", "order": 3}),
         ("dpm_solver", {}), ("dpm_solver", {"method": "multistep", "order": 3}), ("unipc", {"order": 3}),
         ("deis", {"order": 3}), ("deis", {"order": 3, "basis": "logrho"}), ("dpmpp_sde", {"order": 2})]


@pytest.mark.parametrize("name,opts", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_updates_in_place_leave_model_tensors_alone(name, opts):
    """The loops write into a fresh buffer per step: the start x, every x the model saw and every
    prediction it returned are unchanged afterwards (a model may keep or reuse them)."""
    model = gaussian()
    ts = make_grid(model.noise, 8, "logsnr")
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x_start = x.clone()
    rec = Recording(model)
    get_solver(name).fn(rec, x, ts, model.noise, SampleNoise(0, range(2), (1, 4, 4)), **opts)
    assert torch.equal(x, x_start) and len(rec.seen) == 8
    for xin, xin0, out, out0 in rec.seen:
        assert torch.equal(xin, xin0) and torch.equal(out, out0)


class CountingSchedule:
    """A noise schedule that counts how often the solver asks it for values."""

    def __init__(self, noise):
        self.noise, self.calls = noise, 0

    def __getattr__(self, name):
        fn = getattr(self.noise, name)

        def counted(*a, **kw):
            self.calls += 1
            return fn(*a, **kw)

        return counted


@pytest.mark.parametrize("name,opts", [("deis", {"order": 3, "basis": "t"}), ("unipc", {"order": 3}),
                                       ("dpmpp", {"method": "singlestep", "order": 3})])
def test_weights_are_computed_once_per_grid(name, opts):
    """A run calls its solver once per batch on one grid: the second batch reuses the weights
    (no schedule evaluations at all) and gives the same samples; a new grid recomputes them."""
    model = gaussian()
    noise = CountingSchedule(model.noise)
    spec = get_solver(name)
    ts = make_grid(model.noise, 9, "logsnr")
    x = float(model.noise.sigma(ts[0])) * torch.randn(2, 1, 4, 4, dtype=torch.float64)
    first = spec.fn(model, x, ts, noise, None, **opts)
    calls = noise.calls
    again = spec.fn(model, x, ts.copy(), noise, None, **opts)
    assert calls > 0 and noise.calls == calls and torch.equal(first, again)
    spec.fn(model, x, make_grid(model.noise, 9, "time_uniform"), noise, None, **opts)
    assert noise.calls > calls
