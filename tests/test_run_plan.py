"""What a run passes around: the Plan (no model needed), the batch loop's stats and timing, the
per-sample seeds, and the NFE counter's non-finite tracing."""
import numpy as np
import pytest
import torch

import launch.run as run
from common.errors import NfebenchError
from helpers import compose_cfg
from models.counter import CountedDenoiser
from models.registry import FAMILIES, build_model
from sampling.seeds import DRAW_DTYPE, SampleNoise, sample_seed, sample_seeds
from sampling.timesteps import fixed_steps, make_grid


def test_plan_decides_grid_and_cost_without_the_checkpoint(tmp_path):
    cfg = compose_cfg("model=cifar10_ddpm", f"model.path={tmp_path / 'absent'}", "solver=dpmpp", "nfe=10")
    p = run.plan(cfg)
    assert p.steps == 10 and p.cost == 10 and len(p.ts) == 11 and not p.final_x0
    assert p.ts[0] == pytest.approx(float(p.noise.T)) and np.all(np.diff(p.ts) < 0)
    with pytest.raises(NfebenchError, match="absent"):
        run.load_model(cfg)


def test_the_plans_grid_is_the_one_on_the_loaded_models_schedule():
    cfg = compose_cfg("model=gaussian", "solver=heun", "nfe=9", "schedule=karras")
    p, model = run.plan(cfg), run.load_model(cfg)
    assert p.noise.describe() == model.noise.describe()
    grid_opts = {k: v for k, v in cfg["schedule"].items() if k != "name"}
    assert np.array_equal(p.ts, make_grid(model.noise, p.steps, "karras", **grid_opts))


def test_an_explicit_grid_fixes_the_number_of_steps():
    ts = [1.0, 0.6, 0.3, 0.01]
    assert fixed_steps("explicit", {"ts": ts}) == 3 and fixed_steps("logsnr", {}) is None
    p = run.plan(compose_cfg("model=gaussian", "solver=ddim", "nfe=20", "schedule=logsnr")
                 | {"schedule": {"name": "explicit", "ts": ts}})
    assert p.steps == 3 and p.cost == 3 and list(p.ts) == ts


def test_merge_loads_the_model_only_for_a_suite_that_asks_it(monkeypatch):
    from results.merge import merged_suite

    def no_model(cfg):
        raise AssertionError("merge loaded the model")

    monkeypatch.setattr(run, "build_model", no_model)
    assert merged_suite(compose_cfg("model=gaussian", "metrics=none"), []).result() == {}
    with pytest.raises(AssertionError, match="merge loaded the model"):
        merged_suite(compose_cfg("model=gaussian", "metrics=exact"), [])


def test_record_times_loading_the_batch_loop_and_the_model_apart(tmp_path):
    rec = run.run_experiment(compose_cfg("model=gaussian", "solver=dpmpp", "nfe=6", "num_samples=24",
                                         "batch_size=8", "metrics=exact", "grid_images=0"), tmp_path)
    t = rec["timing"]
    assert set(t) == {"total_s", "load_s", "sample_s", "model_s", "decode_s", "rest_s"}
    assert 0 < t["model_s"] < t["sample_s"] and 0 < t["load_s"]
    assert t["load_s"] + t["sample_s"] < t["total_s"]  # the metrics' updates and result are neither
    assert t["rest_s"] == pytest.approx(t["total_s"] - t["model_s"] - t["decode_s"])


def test_sample_seeds_are_numpys_seed_sequence_bit_for_bit():
    def numpy_seed(seed, i):
        s = np.random.SeedSequence([seed, i]).generate_state(2, dtype=np.uint32)
        return ((int(s[0]) << 31) ^ int(s[1])) & ((1 << 63) - 1)

    rng = np.random.default_rng(0)
    for seed in [0, 1, 7, 2**32 - 1, *rng.integers(0, 2**32, 5).tolist()]:
        idx = [0, 1, 2, 63, 64, 50_000, 2**32 - 1, *rng.integers(0, 2**32, 40).tolist()]
        assert sample_seeds(seed, idx) == [numpy_seed(seed, i) for i in idx]
    big = [2**32, 2**40 + 5]  # entropy words past 32 bits take numpy's own path
    assert sample_seeds(3, big) == [numpy_seed(3, i) for i in big]
    assert sample_seeds(2**33, [4]) == [numpy_seed(2**33, 4)] == [sample_seed(2**33, 4)]


@pytest.mark.parametrize("shape", [(5,), (16,), (3, 8, 8)])
def test_batched_noise_equals_each_samples_own_stream(shape):
    gens = [torch.Generator().manual_seed(s) for s in sample_seeds(4, [3, 9, 10])]
    noise = SampleNoise(4, [3, 9, 10], shape, dtype=torch.float64)
    for _ in range(2):  # the initial draw and the next one (a stochastic solver's per-step noise)
        want = torch.stack([torch.randn(shape, generator=g, dtype=DRAW_DTYPE) for g in gens]).double()
        assert torch.equal(noise.draw(), want)


def test_counter_flags_a_nonfinite_input_and_a_negative_infinity():
    class Zero:
        def __call__(self, x, t, cond=None):
            return torch.zeros_like(x)

    c = CountedDenoiser(Zero(), None)
    c(torch.ones(3), 0.9)
    c(torch.tensor([1.0, float("nan"), 2.0]), 0.5)
    assert c.first_nonfinite_call() == 2
    c = CountedDenoiser(Zero(), None)
    c(torch.ones(3), 0.9)
    c(torch.ones(3), 0.8)
    assert c.first_nonfinite_call() is None and c.count == 2 and c.seconds > 0
    c(torch.tensor([float("-inf"), 1.0, 1.0]), 0.7)
    assert c.first_nonfinite_call() == 3


def test_unknown_model_family_and_network_dtype_name_the_valid_ones():
    cfg = compose_cfg("model=gaussian")["model"]
    with pytest.raises(NfebenchError, match=r"^unknown model family 'nope'; valid: diffusers_dit, .*gaussian"):
        build_model({**cfg, "family": "nope"})
    assert "scoresde" in FAMILIES and FAMILIES.names() == sorted(FAMILIES.names())
    from models.pretrained import network_dtype

    with pytest.raises(NfebenchError, match=r"^unknown model.network_dtype 'int8'; valid: float32, float16, bfloat16$"):
        network_dtype("int8")
