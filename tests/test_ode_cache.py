"""The cached reference ODE solve behind ode_rmse (issue 14, item 6): the same numbers as solving, one
file per (model, t range, batch noise), a damaged file solved again."""
import numpy as np
import torch

from metrics.exact import ExactMetrics
from models.registry import build_model
from sampling.seeds import SampleNoise


def digits(rtol=1e-6, std=0.1):
    return build_model({"family": "digits", "noise_schedule": {"name": "vp_linear"}, "ode_rtol": rtol, "std": std})


def run(model, cache, seed=0, t_end=None, **kw):
    t0, t1 = float(model.noise.T), float(t_end or model.noise.eps)
    x_start = float(model.noise.sigma(t0)) * SampleNoise(seed, range(3), model.shape, dtype=torch.float64).draw()
    samples = torch.zeros_like(x_start)  # any samples: ode_rmse is then the reference's RMS
    suite = ExactMetrics(model, t0, t1, cache_dir=str(cache), **kw)
    suite.update(samples, x_start)
    return suite.result()["ode_rmse"], suite


def test_cache_hit_gives_the_solved_numbers_and_a_damaged_file_is_rebuilt(tmp_path):
    m = digits()
    solved, s0 = run(m, tmp_path, ode_cache=False)
    assert s0.cache is None
    first, s1 = run(m, tmp_path)
    again, s2 = run(m, tmp_path)
    assert first == solved == again
    assert (s1.cache.built, s1.cache.hits, s2.cache.built, s2.cache.hits) == (1, 0, 0, 1)
    assert s2.protocol()["ode_reference_cache"]["hits"] == 1
    (path,) = list((tmp_path / "ode_reference").glob("*.npz"))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    rebuilt, s3 = run(m, tmp_path)
    assert rebuilt == solved and s3.cache.built == 1
    with np.load(path) as z:  # a changed number with its old checksum is not trusted either
        ref, check = z["ref"] + 1e-3, z["checksum"]
    np.savez(path, ref=ref, checksum=check)
    again, s4 = run(m, tmp_path)
    assert again == solved and s4.cache.built == 1


def test_cache_key_follows_noise_t_range_and_model(tmp_path):
    m = digits()
    run(m, tmp_path)
    run(m, tmp_path, seed=1)  # other initial noise (seed / index range)
    run(m, tmp_path, t_end=0.01)  # other t range
    other, s = run(digits(std=0.2), tmp_path)  # other model
    assert s.cache.built == 1 and len(list((tmp_path / "ode_reference").glob("*.npz"))) == 4
    gauss = build_model({"family": "gaussian", "shape": [1, 2, 2], "noise_schedule": {"name": "vp_linear"}})
    assert run(gauss, tmp_path)[1].cache is None  # a closed form is not cached
