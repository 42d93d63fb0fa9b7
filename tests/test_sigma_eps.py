"""sigma eps from an eps network: the counter hands back s * eps (one pass) instead of the x0 round trip, only
when nothing alters the x0; the solvers stepping in eps give the same samples either way."""
from __future__ import annotations

import pytest
import torch

from helpers import gaussian
from models import denoiser
from models.counter import CountedDenoiser
from models.thresholding import Thresholded
from sampling.registry import get_solver
from sampling.seeds import SampleNoise
from sampling.solvers.grid import sigma_eps
from sampling.timesteps import make_grid

F64 = pytest.mark.usefixtures("float64_default")


class Hidden:
    """The same model behind a plain callable: the x0 path (what a wrapper that forwards attributes gets)."""

    def __init__(self, counter):
        self.counter = counter

    def __call__(self, x, t, cond=None):
        return self.counter(x, t)


@F64
def test_an_eps_network_gives_its_own_output_times_sigma():
    model = gaussian(prediction="eps")
    x = torch.randn(3, *model.shape, generator=torch.Generator().manual_seed(0))
    t = 0.4
    a, s = float(model.noise.alpha(t)), float(model.noise.sigma(t))
    counter = CountedDenoiser(model, budget=2)
    got = sigma_eps(counter, x, t, a, s)
    assert torch.equal(got, s * model.predict(x, t)) and counter.count == 1 and counter.network_evals == 1
    # the x0 path gives the same up to rounding and is one NFE too
    slow = sigma_eps(Hidden(counter), x, t, a, s)
    assert torch.allclose(got, slow, rtol=1e-12, atol=1e-12) and not torch.equal(got, slow) and counter.count == 2


@F64
def test_thresholding_keeps_the_x0_path():
    model = Thresholded(gaussian(prediction="eps"), ratio=0.5)
    x = 3 * torch.randn(3, *model.shape, generator=torch.Generator().manual_seed(0))
    t = 0.4
    a, s = float(model.noise.alpha(t)), float(model.noise.sigma(t))
    got = sigma_eps(CountedDenoiser(model, None), x, t, a, s)
    assert torch.allclose(got, x - a * model(x, t), rtol=0, atol=1e-12)
    assert not torch.allclose(got, s * model.model.predict(x, t))  # the clipped x0 matters here


@F64
@pytest.mark.parametrize("name,opts", [("pndm", {}), ("pndm", {"method": "f_pndm"}), ("ipndm", {}), ("deis", {}),
                                       ("hb", {}), ("ghvb", {}), ("dpm_solver", {"method": "multistep"})])
def test_eps_solvers_take_the_fast_path_with_the_same_samples(name, opts, monkeypatch):
    model = gaussian(prediction="eps")
    spec = get_solver(name)
    ts = make_grid(model.noise, 12, "logsnr")
    x = float(model.noise.sigma(ts[0])) * SampleNoise(0, range(4), model.shape).draw()
    conversions = []  # eps -> x0 by the adapter: none on the fast path
    to_x0 = denoiser.TO_X0["eps"]
    monkeypatch.setitem(denoiser.TO_X0, "eps", lambda *a: conversions.append(1) or to_x0(*a))
    fast = CountedDenoiser(model, None)
    got = spec.fn(fast, x, ts, model.noise, None, **opts)
    assert fast.count > 0 and not conversions
    slow = CountedDenoiser(model, None)
    want = spec.fn(Hidden(slow), x, ts, model.noise, None, **opts)
    assert len(conversions) == slow.count == fast.count
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)
