"""metrics=fid_is (torch-fidelity) and metrics=clean_fid: KID, precision/recall, shards, offline errors, e2e."""
import time

import numpy as np
import pytest
import torch

from helpers import ImageSet, compose_cfg, launch, write_pngs
from metrics import clean_fid
from metrics import torch_fidelity as fid_is
from metrics.features import EXTRACTORS, Extractor, build_extractor, check_images
from metrics.streaming import FeatureSubset
from metrics.suites import build_metrics, metrics_config
from common.errors import NfebenchError


@EXTRACTORS.register("test_flat6")
class Flat6(Extractor):
    """Features = the 6 pixels of a (B, 3, 1, 2) image: feature sets are chosen directly."""
    name, feature_dim, input_size, num_classes, sha256 = "test_flat6", 6, None, 0, "test"

    def __init__(self, path=None):
        self.net = torch.nn.Identity()

    def prepare(self, x):
        return check_images(x).double()

    def forward(self, x):
        return x.reshape(len(x), -1), None


def run(tmp, *overrides):
    from launch.run import run_experiment

    return run_experiment(compose_cfg(*overrides), tmp)


def gaussian_data(n, seed=1):
    """Draws from the `gaussian` model's data distribution (shape 3x8x8) at t_end."""
    from models.registry import build_model

    m = build_model({"family": "gaussian", "shape": [3, 8, 8], "noise_schedule": {"name": "vp_linear"}})
    mean, cov = m.marginal_moments(float(m.noise.eps))
    z = np.random.default_rng(seed).multivariate_normal(np.asarray(mean).ravel(), np.asarray(cov), n)
    return torch.from_numpy(z).reshape(n, 3, 8, 8)


# ---- bounded feature subsets ---------------------------------------------------------------

def test_feature_subset_is_shard_exact_bounded_and_rejects_overlap():
    feats = np.random.default_rng(0).standard_normal((500, 4)).astype(np.float32)
    one = FeatureSubset(64, 4)
    for lo in range(0, 500, 70):
        one.update(range(lo, min(lo + 70, 500)), feats[lo:lo + 70])
    a, b = FeatureSubset(64, 4), FeatureSubset(64, 4)
    a.update(range(300, 500), feats[300:])
    b.update(range(0, 120), feats[:120]), b.update(range(120, 300), feats[120:300])
    a.merge(FeatureSubset.from_state(b.state(), 64))
    assert len(one.idx) == 64 and np.array_equal(a.idx, one.idx) and np.array_equal(a.feats, one.feats)
    np.testing.assert_array_equal(one.feats, feats[one.idx])  # rows stay with their indices
    assert 0.25 < np.mean(one.idx < 250) < 0.75  # drawn from the whole range, not its start
    with pytest.raises(NfebenchError, match="disjoint"):
        a.merge(FeatureSubset.from_state(b.state(), 64))


def npz_with_features(path, feats):
    np.savez(path, mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), features=feats)
    return str(path)


def test_precision_recall_identical_sets_are_one_and_far_sets_zero(tmp_path):
    x = (torch.rand(80, 3, 1, 2, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8).double()
    feats = x.reshape(80, -1).numpy()
    opts = {"name": "fid", "extractor": "test_flat6", "quantize": False, "prc": True, "feature_subset": 100}
    same = build_metrics({**opts, "reference": npz_with_features(tmp_path / "same.npz", feats)}, None, 1, 0)
    same.update(x)
    r = same.result()
    assert r["precision"] == 1.0 and r["recall"] == 1.0 and r["fid"] == pytest.approx(0, abs=1e-9)
    far = build_metrics({**opts, "reference": npz_with_features(tmp_path / "far.npz", feats + 50.0)}, None, 1, 0)
    far.update(x)
    r = far.result()
    assert r["precision"] == 0.0 and r["recall"] == 0.0 and r["fid"] > 100


def test_kid_and_prc_need_reference_features(tmp_path):
    np.savez(tmp_path / "r.npz", mu=np.zeros(6), sigma=np.eye(6))
    with pytest.raises(NfebenchError, match="reference features"):
        build_metrics({"name": "fid", "extractor": "test_flat6", "reference": str(tmp_path / "r.npz"), "kid": True},
                      None, 1, 0)


def test_fid_is_suite_agrees_with_torch_fidelity_calculate_metrics(tmp_path):
    """FID, IS (1 split), KID and precision/recall from torch-fidelity's own pipeline, same features.

    KID subsets of the full set size and precision/recall on full sets do not depend on row order,
    so the streamed subsets must reproduce torch-fidelity's numbers exactly.
    """
    import torch_fidelity
    from metrics.torch_fidelity import register_with_torch_fidelity

    g = torch.Generator().manual_seed(0)
    a = (torch.rand(100, 3, 8, 8, generator=g) * 255).round().to(torch.uint8)
    b = (torch.rand(100, 3, 8, 8, generator=g) * 200).round().to(torch.uint8)
    theirs = torch_fidelity.calculate_metrics(
        input1=ImageSet(a), input2=ImageSet(b), fid=True, isc=True, kid=True, prc=True, isc_splits=1,
        kid_subsets=5, kid_subset_size=100, cuda=False, cache=False, verbose=False, batch_size=50,
        feature_extractor=register_with_torch_fidelity("tiny"))
    ref = write_pngs(tmp_path / "ref", b.double() / 127.5 - 1)
    s = build_metrics({"name": "fid_is", "extractor": "tiny", "reference": str(ref), "cache_dir": str(tmp_path / "c"),
                       "kid": True, "prc": True, "kid_subsets": 5, "kid_subset_size": 100}, None, 1, 0)
    s.update(a[:60].double() / 127.5 - 1, indices=range(60))
    s.update(a[60:].double() / 127.5 - 1, indices=range(60, 100))
    ours = s.result()
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6) and ours["fid"] > 0.1
    assert ours["inception_score"] == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
    assert ours["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4, abs=1e-7)
    assert ours["kid_mean"] > 10 * abs(theirs["kernel_inception_distance_std"]) + 1e-6  # a real difference
    assert (ours["precision"], ours["recall"]) == pytest.approx((theirs["precision"], theirs["recall"]), abs=1e-7)
    proto = s.protocol()
    assert proto["implementation"]["name"] == "torch-fidelity"
    assert proto["implementation"]["version"] == torch_fidelity.__version__


def test_fid_is_shards_merge_exactly_including_kid_and_prc(tmp_path):
    ref = write_pngs(tmp_path / "ref", gaussian_data(150))
    opts = {"name": "fid_is", "extractor": "tiny", "reference": str(ref), "cache_dir": str(tmp_path / "c"),
            "kid": True, "prc": True, "kid_subsets": 4, "kid_subset_size": 50, "feature_subset": 80}
    x = gaussian_data(160, seed=7)
    one, a, b = (build_metrics(opts, None, 1, 0) for _ in range(3))
    one.update(x[:90], indices=range(90)), one.update(x[90:], indices=range(90, 160))
    a.update(x[:40], indices=range(40))
    b.update(x[40:], indices=range(40, 160))
    np.savez(tmp_path / "b.npz", **b.state())
    with np.load(tmp_path / "b.npz") as st:
        a.merge_state(dict(st))
    so, sa = one.state(), a.state()
    for k in ("subset_idx", "subset_feats"):
        assert np.array_equal(so[k], sa[k])
    np.testing.assert_allclose(sa["m2"], so["m2"], rtol=1e-12, atol=1e-12)
    ro, ra = one.result(), a.result()
    assert ra.keys() == ro.keys() >= {"fid", "inception_score", "kid_mean", "precision", "recall"}
    for k in ro:
        assert ra[k] == pytest.approx(ro[k], rel=1e-9, abs=1e-12), k


def test_clean_fid_kid_is_kid_mean_and_kid_std_like_the_other_suites(tmp_path):
    """kid_mean is clean-fid's kernel_distance (seeded as the suite seeds it); kid_std is the spread of
    the same subsets' unbiased polynomial-kernel MMDs, recomputed here from clean-fid's draws."""
    from cleanfid.fid import kernel_distance

    ref = write_pngs(tmp_path / "ref", gaussian_data(100))
    s = build_metrics({"name": "clean_fid", "extractor": "tiny", "reference": str(ref), "cache_dir": str(tmp_path / "c"),
                       "kid": True, "kid_subsets": 6, "kid_subset_size": 40}, None, 1, 0)
    s.update(gaussian_data(90, seed=4) + 0.3)
    out = s.result()
    assert "kid" not in out and {"kid_mean", "kid_std"} <= out.keys()
    gen, rf = s.stream.subset.feats.astype(np.float64), s.ref["subset_feats"].astype(np.float64)
    np.random.seed(2020)
    assert out["kid_mean"] == pytest.approx(kernel_distance(gen, rf, 6, 40), rel=1e-12) and out["kid_mean"] > 0

    def kernel(a, b):  # polynomial kernel of degree 3, gamma 1/d, coef0 1
        return (a @ b.T / a.shape[1] + 1) ** 3

    def off_diagonal_mean(m):
        return (m.sum() - np.trace(m)) / (len(m) * (len(m) - 1))

    np.random.seed(2020)  # clean-fid draws the reference rows first, then the generated ones, per subset
    mmd = []
    for _ in range(6):
        x, y = rf[np.random.choice(len(rf), 40, replace=False)], gen[np.random.choice(len(gen), 40, replace=False)]
        mmd.append(off_diagonal_mean(kernel(x, x)) + off_diagonal_mean(kernel(y, y)) - 2 * kernel(x, y).mean())
    assert out["kid_std"] == pytest.approx(np.std(mmd), rel=1e-9) and out["kid_std"] > 0


# ---- end to end from a sampler run -----------------------------------------------------------

@pytest.mark.slow
def test_fid_is_end_to_end_on_gaussian_rgb_samples(tmp_path):
    ref = write_pngs(tmp_path / "ref", gaussian_data(300))
    rec = run(tmp_path / "run", "model=gaussian", "metrics=fid_is", "metrics.extractor=tiny",
              f"metrics.reference={ref}", f"metrics.cache_dir={tmp_path / 'c'}", "metrics.kid=true",
              "metrics.prc=true", "metrics.kid_subset_size=100", "metrics.kid_subsets=10", "num_samples=200",
              "batch_size=100", "nfe=10", "seed=3", "save_samples=npz")
    m, p = rec["metrics"], rec["metrics_protocol"]
    noise = build_metrics({"name": "fid_is", "extractor": "tiny", "reference": str(ref), "cache_dir": str(tmp_path / "c")},
                          None, 1, 0)
    noise.update(torch.rand(200, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert 0 < m["fid"] < 0.5 * noise.result()["fid"]  # samples of the model sit near its data
    assert 0 <= m["precision"] <= 1 and m["recall"] > 0.3 and np.isfinite(m["kid_mean"])
    assert p["suite"] == "fid_is" and p["implementation"]["name"] == "torch-fidelity"
    assert p["implementation"]["version"] and p["extractor"]["sha256"] == build_extractor("tiny").sha256
    assert p["reference"]["id"] == f"folder:{ref.resolve()}" and "uint8" in p["resize_mode"]
    assert p["num_samples"] == 200 and p["seed"] == 3 and p["index_range"] == [0, 200]
    assert p["feature_extraction_s"] > 0 and p["feature_subset"]["kept"] == 200
    files = sorted((tmp_path / "run" / "samples").glob("*.npz"))
    assert [f.name for f in files] == ["000000-000099.npz", "000100-000199.npz"]
    with np.load(files[1]) as z:
        assert z["images"].shape == (100, 3, 8, 8) and z["images"].dtype == np.uint8
        assert list(z["indices"]) == list(range(100, 200))


@pytest.mark.slow
def test_clean_fid_end_to_end_matches_clean_fid_on_the_saved_pngs(tmp_path):
    """digits samples -> suite (streamed) vs clean-fid's own folder pipeline on the PNGs saved by the run."""
    from cleanfid import fid as cfid
    from cleanfid.resize import make_resizer
    from sklearn.datasets import load_digits

    digits = torch.from_numpy(load_digits().data[:400] / 8.0 - 1.0).reshape(-1, 1, 8, 8)
    ref = write_pngs(tmp_path / "ref", digits)
    out = tmp_path / "run"
    rec = run(out, "model=digits", "metrics=clean_fid", "metrics.extractor=tiny", "metrics.mode=clean",
              f"metrics.reference={ref}", f"metrics.cache_dir={tmp_path / 'c'}", "num_samples=150",
              "batch_size=50", "nfe=8", "save_samples=true")
    ext = build_extractor("tiny")

    def feats(d):
        return cfid.get_folder_features(str(d), model=lambda x: ext(x / 127.5 - 1)[0], num_workers=0, batch_size=50,
                                        device=torch.device("cpu"), mode="clean", verbose=False,
                                        custom_fn_resize=make_resizer("PIL", False, "bicubic", (32, 32)))

    fa, fb = feats(out / "samples"), feats(ref)
    assert len(fa) == 150 and (out / "samples" / "000149.png").is_file()
    theirs = cfid.frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    assert rec["metrics"]["fid"] == pytest.approx(theirs, rel=1e-4) and theirs > 0
    p = rec["metrics_protocol"]
    assert p["implementation"]["name"] == "clean-fid" and p["implementation"]["mode"] == "clean"
    assert "PIL bicubic" in p["resize_mode"] and p["extractor"]["sha256"] == ext.sha256


# ---- offline errors, bad input -----------------------------------------------------------------

def _one_line_fast(cfg, *must):
    t0 = time.perf_counter()
    with pytest.raises(NfebenchError) as err:
        build_metrics(cfg, None, 1, 0)
    assert time.perf_counter() - t0 < 1.0
    msg = str(err.value)
    assert "\n" not in msg and all(m in msg for m in must), msg
    return msg


def test_missing_weights_and_datasets_fail_in_one_line_under_a_second(tmp_path):
    nowhere = tmp_path / "nowhere"
    _one_line_fast({"name": "fid_is", "extractor_path": str(nowhere / fid_is.TF_WEIGHTS_FILE), "reference": "x"},
                   fid_is.TF_WEIGHTS_FILE, str(nowhere), "metrics.extractor_path")
    for mode in clean_fid.MODE_WEIGHTS:
        _one_line_fast({"name": "clean_fid", "mode": mode, "extractor": "inception", "extractor_path": str(nowhere),
                        "reference": "x"}, clean_fid.MODE_WEIGHTS[mode][0], str(nowhere))
    _one_line_fast({"name": "fid_is", "extractor": "tiny", "reference": "cifar10-train", "cache_dir": str(tmp_path / "c"),
                    "dataset_root": str(nowhere)}, "cifar10-train", str(nowhere / "cifar-10-batches-py"),
                   "cifar-10-python.tar.gz")
    fake = tmp_path / "w" / "inception-2015-12-05.pt"  # present (hashed, not loaded): now the stats are missing
    fake.parent.mkdir()
    fake.write_bytes(b"not loaded before the first batch")
    _one_line_fast({"name": "clean_fid", "extractor": "inception", "extractor_path": str(fake),
                    "reference": "cifar10-train", "stats_dir": str(nowhere)},
                   str(nowhere / "cifar10_clean_train_32.npz"), "clean-fid/stats/cifar10_clean_train_32.npz")
    _one_line_fast({"name": "fid_is", "extractor": "tiny", "reference": str(tmp_path / "missing.npz")}, "not found")
    _one_line_fast({"name": "clean_fid", "extractor": "tiny", "mode": "bogus", "reference": "x"}, "legacy_pytorch")


@pytest.mark.parametrize("suite,own", [("fid", None), ("fid_is", "inception-v3-compat"), ("clean_fid", "inception")])
def test_an_unknown_extractor_lists_the_backends_and_nfebench_extractors(suite, own):
    msg = _one_line_fast({"name": suite, "extractor": "nope", "reference": "x"}, "unknown", "'nope'; valid: ")
    valid = msg.split("valid: ")[1].split(", ")
    assert {"tiny", "fid_helper_inception"} <= set(valid) and (own is None or valid[0] == own), msg


def test_missing_weights_through_launch_exit_2_and_no_record(tmp_path):
    r = launch("metrics=fid_is", f"metrics.extractor_path={tmp_path / 'none.pth'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("nfebench: error:") and fid_is.TF_WEIGHTS_FILE in r.stderr
    assert not (tmp_path / "run" / "record.json").exists()


def test_offline_weight_and_dataset_tables_match_the_libraries():
    import cleanfid.downloads_helper
    import cleanfid.inception_pytorch
    import torch_fidelity
    import torchvision.datasets as tvd
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert URL_INCEPTION_V3 == fid_is.TF_WEIGHTS_URL
    assert set(fid_is.TF_DATASETS) == set(torch_fidelity.registry.DATASETS_REGISTRY)
    for name, (folder, url) in fid_is.TF_DATASETS.items():
        cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "stl10": tvd.STL10}[name.split("-")[0]]
        assert (cls.base_folder, cls.url) == (folder, url)
    assert clean_fid.MODE_WEIGHTS["clean"][1] == cleanfid.downloads_helper.inception_url
    assert clean_fid.MODE_WEIGHTS["legacy_pytorch"][1] == cleanfid.inception_pytorch.FID_WEIGHTS_URL


@pytest.mark.parametrize("suite", ["fid_is", "clean_fid"])
@pytest.mark.parametrize("bad,what", [
    (torch.zeros(4, 8, 8), "shape"),
    (torch.zeros(4, 2, 8, 8), "shape"),
    (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), "dtype"),
])
def test_wrong_image_batches_are_one_line_errors(tmp_path, suite, bad, what):
    ext = build_extractor("tiny")
    np.savez(tmp_path / "r.npz", mu=np.zeros(ext.feature_dim), sigma=np.eye(ext.feature_dim))
    s = build_metrics({"name": suite, "extractor": "tiny", "reference": str(tmp_path / "r.npz")}, None, 1, 0)
    with pytest.raises(NfebenchError, match=what) as err:
        s.update(bad)
    assert "\n" not in str(err.value)


def test_model_fid_reference_is_the_default_and_its_count_is_recorded():
    cfg = {"model": {"fid_reference": {"name": "cifar10-train", "num_samples": 50000}},
           "metrics": {"name": "fid_is", "reference": None, "protocol_num_samples": None}}
    assert metrics_config(cfg)["reference"] == "cifar10-train"
    assert metrics_config(cfg)["protocol_num_samples"] == 50000
    cfg["metrics"]["reference"] = "mine.npz"
    assert metrics_config(cfg)["reference"] == "mine.npz"
    assert metrics_config({"model": {}, "metrics": {"name": "exact"}}) == {"name": "exact"}


def test_bad_save_samples_fails_before_sampling_and_writes_nothing(tmp_path):
    with pytest.raises(NfebenchError, match="save_samples"):
        run(tmp_path / "run", "save_samples=jpeg", "num_samples=10")
    assert not (tmp_path / "run").exists()


def test_a_run_that_fails_after_saving_samples_leaves_no_samples_folder(tmp_path, monkeypatch):
    import launch.run as run_mod

    real = run_mod.build_metrics

    def failing_suite(*a, **kw):
        suite = real(*a, **kw)

        def result():
            raise NfebenchError("metric failed after sampling")

        suite.result = result
        return suite

    monkeypatch.setattr(run_mod, "build_metrics", failing_suite)
    out = tmp_path / "run"
    with pytest.raises(NfebenchError, match="metric failed"):
        run(out, "metrics=none", "save_samples=png", "num_samples=20", "batch_size=10")
    assert not (out / "samples").exists() and not (out / ".samples.partial").exists()
    assert not (out / "record.json").exists()

    monkeypatch.setattr(run_mod, "build_metrics", real)
    run(out, "metrics=none", "save_samples=png", "num_samples=20", "batch_size=10")
    assert len(list((out / "samples").glob("*.png"))) == 20 and not (out / ".samples.partial").exists()
