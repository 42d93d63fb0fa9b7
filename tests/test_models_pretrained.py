"""Pretrained-checkpoint model configs, each run on a miniature checkpoint of the same diffusers classes.

No hub here: every test saves a tiny random-weight network with `save_pretrained` into tmp_path
and loads it through the real model config with `model.path` overridden, then samples through
launch.run.plan / sample_batches (the path `launch.py` takes).
"""
import json
import time
from pathlib import Path

import pytest
import torch

import diffusers  # noqa: F401  (a declared dependency: missing must fail, not skip)
from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DModel, VQModel

from launch.run import load_model
from models.registry import build_model
from common.errors import NfebenchError

from helpers import batch_copies_nothing_blocking, compose_cfg, launch, sampled


def _bump(net, scale=1.5, seed=0):
    # Random init leaves some outputs (near) constant; perturbing every weight makes them depend on the input.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale).add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def tiny_unet(res, ch=3, out=None):
    torch.manual_seed(0)
    # No mid-block attention above 32x32: over 128x128 tokens it would dominate the test's run time.
    return _bump(UNet2DModel(sample_size=res, in_channels=ch, out_channels=out or ch, block_out_channels=(8, 16),
                             layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, add_attention=res <= 32))


def tiny_vq():
    torch.manual_seed(1)
    return VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                   up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8), layers_per_block=1,
                   latent_channels=3, num_vq_embeddings=16, norm_num_groups=4, sample_size=256)


def tiny_dit():
    torch.manual_seed(2)
    return _bump(DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                       num_layers=1, sample_size=32, patch_size=4, num_embeds_ada_norm=1000,
                                       norm_num_groups=4), scale=1.0)


def tiny_kl():
    torch.manual_seed(3)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                         layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=256)


def save_checkpoint(name, root: Path) -> Path:
    """A miniature of the checkpoint `name`'s format, saved like the hub repo is laid out."""
    d = root / name
    if name == "cifar10_ddpm":
        tiny_unet(32).save_pretrained(d)
    elif name in ("celebahq_ddpm", "lsun_church_ddpm", "lsun_bedroom_ddpm"):
        tiny_unet(256).save_pretrained(d)
    elif name == "celebahq_ldm":
        tiny_unet(64).save_pretrained(d / "unet")
        tiny_vq().save_pretrained(d / "vqvae")
    elif name == "imagenet256_dit":
        tiny_dit().save_pretrained(d / "transformer")
        tiny_kl().save_pretrained(d / "vae")
    return d


# name -> (image shape after decoding, network batch evaluations per NFE)
IMAGE_MODELS = {
    "cifar10_ddpm": ((3, 32, 32), 1),
    "celebahq_ddpm": ((3, 256, 256), 1),
    "lsun_church_ddpm": ((3, 256, 256), 1),
    "lsun_bedroom_ddpm": ((3, 256, 256), 1),
    "celebahq_ldm": ((3, 256, 256), 1),
    "imagenet256_dit": ((3, 256, 256), 2),
}


def run_path(cfg):
    """plan + load_model + sample_batches as run_experiment does; returns (samples, counted, stats, model).
    The only host sync is each batch's finiteness check: none in the solver, the counter or the family's adapter
    (helpers.SyncRecorder; the network and the decoder themselves are not looked at)."""
    model = load_model(cfg)
    x, stats = sampled(cfg, model)
    return x, stats.counted, stats, model


@pytest.mark.parametrize("name", sorted(IMAGE_MODELS))
def test_every_image_model_config_samples_through_the_run_path(name, tmp_path):
    image_shape, per_nfe = IMAGE_MODELS[name]
    path = save_checkpoint(name, tmp_path)
    n = 3 if image_shape[-1] <= 32 else 2  # two batches where it is cheap, one at 256x256
    for solver, nfe in (("ddim", 3), ("dpmpp", 4)):
        cfg = compose_cfg(f"model={name}", f"model.path={path}", f"solver={solver}", f"nfe={nfe}", f"num_samples={n}",
                          "batch_size=2", "metrics=none")
        x, counted, stats, model = run_path(cfg)
        assert x.shape == (n, *image_shape) and x.dtype == torch.float32
        assert bool(torch.isfinite(x).all())
        assert counted == nfe and stats.network_evals == per_nfe * nfe
        if getattr(model, "latent", False):
            assert x.min() >= -1 and x.max() <= 1 and stats.decode_s > 0
            assert tuple(model.shape) != image_shape  # sampled in latent space, decoded after
        assert x.std() > 0
    batch_copies_nothing_blocking(cfg["model"], model)
    rec = model.describe()
    assert rec["source"]["path"] == str(path) and rec["source"]["loaded_from"] == "path"
    assert rec["prediction"] == "eps" and rec["network_dtype"] == "float32"


def test_image_checkpoints_default_to_their_fid_protocol_and_overrides_still_win():
    for name in IMAGE_MODELS:
        assert compose_cfg(f"model={name}")["metrics"]["name"] == "fid_is", name
        assert compose_cfg(f"model={name}", "metrics=clean_fid")["metrics"]["name"] == "clean_fid", name
    assert compose_cfg("model=digits_unet")["metrics"]["name"] == "none"
    # the protocol's sample count is the default; the command line still wins
    assert compose_cfg("model=cifar10_ddpm")["num_samples"] == 50000
    assert compose_cfg("model=cifar10_ddpm", "num_samples=64")["num_samples"] == 64
    assert compose_cfg("model=digits")["num_samples"] == 2000
    assert compose_cfg("model=digits")["metrics"]["name"] == "exact"
    assert compose_cfg("model=gaussian")["metrics"]["name"] == "exact"


def test_model_configs_name_their_checkpoint_and_schedule():
    expect = {"cifar10_ddpm": "google/ddpm-cifar10-32", "celebahq_ddpm": "google/ddpm-ema-celebahq-256",
              "lsun_church_ddpm": "google/ddpm-ema-church-256", "lsun_bedroom_ddpm": "google/ddpm-ema-bedroom-256",
              "celebahq_ldm": "CompVis/ldm-celebahq-256", "imagenet256_dit": "facebook/DiT-XL-2-256"}
    for name, repo in expect.items():
        m = compose_cfg(f"model={name}")["model"]
        assert m["repo_id"] == repo and m["prediction"] == "eps" and m["noise_schedule"]["name"] == "vp_discrete"
        assert m["fid_reference"]["num_samples"] in (10000, 50000)
        ns = m["noise_schedule"]
        betas = (ns["betas"], ns["beta_start"], ns["beta_end"], ns["num_train_timesteps"])
        assert betas == (("scaled_linear", 0.0015, 0.0195, 1000) if name == "celebahq_ldm" else
                         ("linear", 1e-4, 0.02, 1000))


def test_pixel_model_is_the_eps_network_at_the_discrete_step(tmp_path):
    """x0 = (x - sigma * eps_net(x, n)) / alpha with n = (t - 1/N) N, the fractional DDPM step."""
    path = save_checkpoint("cifar10_ddpm", tmp_path)
    model = build_model({**compose_cfg("model=cifar10_ddpm", f"model.path={path}")["model"]})
    net = UNet2DModel.from_pretrained(path)
    x = torch.randn(2, 3, 32, 32)
    for t in (0.9, 0.25):
        a, s = float(model.noise.alpha(t)), float(model.noise.sigma(t))
        n = torch.full((2,), (t - 1e-3) * 1000)
        with torch.no_grad():
            ref = (x - s * net(x, n).sample) / a
        torch.testing.assert_close(model(x, t), ref, rtol=1e-5, atol=1e-5)


def dit_model(tmp_path, **over):
    path = save_checkpoint("imagenet256_dit", tmp_path)
    args = ["model=imagenet256_dit", f"model.path={path}", *[f"model.{k}={v}" for k, v in over.items()]]
    return build_model(compose_cfg(*args)["model"]), DiTTransformer2DModel.from_pretrained(path / "transformer")


@pytest.mark.parametrize("channels", ["null", 3])
def test_cfg_scale_one_is_the_conditional_and_zero_the_unconditional_model(tmp_path, channels):
    """null guides all 4 latent channels (diffusers); 3 (the default) only the first three, the last stays
    conditional, as the reference DiT sampler does."""
    x, t = torch.randn(3, 4, 32, 32), 0.6
    labels = torch.tensor([1, 7, 999])
    outs = {}
    for scale in (0.0, 1.0, 3.0):
        model, net = dit_model(tmp_path / str(scale), guidance_scale=scale, guidance_channels=channels)
        n = torch.full((3,), float(model.noise.model_time(t)))
        with torch.no_grad():
            cond = net(x, timestep=n, class_labels=labels).sample[:, :4]
            uncond = net(x, timestep=n, class_labels=torch.full((3,), 1000)).sample[:, :4]
            outs[scale] = model.predict(x, t, labels)
    assert (cond - uncond).abs().max() > 1e-3, "the miniature must depend on the label for this test to mean anything"
    k = 4 if channels == "null" else channels
    guided = {s: torch.cat([uncond[:, :k] + s * (cond[:, :k] - uncond[:, :k]), cond[:, k:]], 1) for s in outs}
    torch.testing.assert_close(outs[1.0], cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0.0], guided[0.0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[3.0], guided[3.0], rtol=1e-4, atol=1e-4)
    if channels == "null":
        torch.testing.assert_close(outs[0.0], uncond, rtol=1e-5, atol=1e-5)


def test_dit_guides_three_channels_by_default_like_the_reference_sampler():
    assert compose_cfg("model=imagenet256_dit")["model"]["guidance_channels"] == 3


def test_class_labels_come_from_seed_and_index_or_from_a_list(tmp_path):
    model, _ = dit_model(tmp_path)
    a = model.conditions(0, range(0, 8)).tolist()
    assert a[3:6] == model.conditions(0, range(3, 6)).tolist()  # independent of batching
    assert a != model.conditions(1, range(0, 8)).tolist() and all(0 <= v < 1000 for v in a)
    listed, _ = dit_model(tmp_path / "l", class_labels="[5,9]")
    assert listed.conditions(0, range(2, 7)).tolist() == [5, 9, 5, 9, 5]
    with pytest.raises(NfebenchError, match="class_labels"):
        dit_model(tmp_path / "bad", class_labels="[1000]")


def test_guided_samples_do_not_depend_on_batch_size(tmp_path):
    path = save_checkpoint("imagenet256_dit", tmp_path)
    base = ["model=imagenet256_dit", f"model.path={path}", "solver=ddim", "nfe=2", "num_samples=3", "metrics=none"]
    a = run_path(compose_cfg(*base, "batch_size=3"))[0]
    b = run_path(compose_cfg(*base, "batch_size=1"))[0]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_adapters_give_the_same_samples_through_the_run_path(prediction):
    base = ["model=digits", "solver=dpmpp", "nfe=6", "num_samples=16", "batch_size=16", "metrics=none"]
    ref = run_path(compose_cfg(*base))[0]
    other = run_path(compose_cfg(*base, f"model.prediction={prediction}"))[0]
    torch.testing.assert_close(other, ref, rtol=1e-9, atol=1e-9)


def test_network_dtype_changes_the_network_only(tmp_path):
    path = save_checkpoint("cifar10_ddpm", tmp_path)
    base = ["model=cifar10_ddpm", f"model.path={path}", "solver=ddim", "nfe=3", "num_samples=2", "metrics=none"]
    x32, _, _, m32 = run_path(compose_cfg(*base))
    xbf, _, _, mbf = run_path(compose_cfg(*base, "model.network_dtype=bfloat16"))
    assert xbf.dtype == torch.float32 and bool(torch.isfinite(xbf).all())
    assert next(mbf.net.parameters()).dtype == torch.bfloat16 and next(m32.net.parameters()).dtype == torch.float32
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    e32, ebf = m32.predict(x, 0.5), mbf.predict(x, 0.5)
    assert ebf.dtype == torch.float64  # the solver's dtype comes back
    rel = float((ebf - e32).norm() / e32.norm())
    assert 1e-6 < rel < 0.05, rel  # bf16 rounding, not a different network
    with pytest.raises(NfebenchError, match="network_dtype"):
        build_model(compose_cfg(*base, "model.network_dtype=int8")["model"])


def test_shape_mismatch_is_one_clear_error(tmp_path):
    tiny_unet(16).save_pretrained(tmp_path / "small")
    with pytest.raises(NfebenchError, match=r"does not match the model config: sample_size=\(16, 16\)") as e:
        build_model(compose_cfg("model=cifar10_ddpm", f"model.path={tmp_path / 'small'}")["model"])
    assert "\n" not in str(e.value)
    path = save_checkpoint("celebahq_ldm", tmp_path)
    with pytest.raises(NfebenchError, match=r"unet does not match the model config: in_channels=3 \(model config expects 4\)"):
        build_model(compose_cfg("model=celebahq_ldm", f"model.path={path}", "model.latent_shape=[4,64,64]")["model"])


def test_weights_that_do_not_fit_their_config_are_one_clear_error(tmp_path):
    d = save_checkpoint("cifar10_ddpm", tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "block_out_channels": [8, 24]}))
    with pytest.raises(NfebenchError, match="cannot load UNet2DModel from") as e:
        build_model(compose_cfg("model=cifar10_ddpm", f"model.path={d}")["model"])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_weights_file_is_one_clear_error(tmp_path, damage):
    d = save_checkpoint("cifar10_ddpm", tmp_path)
    w = d / "diffusion_pytorch_model.safetensors"
    data = w.read_bytes()
    w.write_bytes(b"\x00not a safetensors file" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(NfebenchError, match=f"cannot load UNet2DModel from {d}") as e:
        build_model(compose_cfg("model=cifar10_ddpm", f"model.path={d}")["model"])
    assert "\n" not in str(e.value)


def test_missing_local_directory_names_the_file(tmp_path):
    with pytest.raises(NfebenchError, match=r"vqvae/config.json not found"):
        tiny_unet(64).save_pretrained(tmp_path / "unet")
        build_model(compose_cfg("model=celebahq_ldm", f"model.path={tmp_path}")["model"])


def test_offline_without_cache_fails_at_once_naming_repo_and_remedy(tmp_path, monkeypatch):
    import huggingface_hub  # noqa: F401  (warm import: only the check itself is timed)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_cfg("model=cifar10_ddpm", f"model.cache_dir={tmp_path}")["model"]
    start = time.perf_counter()
    with pytest.raises(NfebenchError) as e:
        build_model(cfg)
    elapsed = time.perf_counter() - start
    msg = str(e.value)
    assert elapsed < 1.0, f"offline failure took {elapsed:.2f}s"
    assert "google/ddpm-cifar10-32" in msg and "HF_HUB_OFFLINE" in msg and "model.path" in msg
    assert str(tmp_path) in msg and "\n" not in msg


def test_unreachable_hub_is_detected_without_the_hubs_retries(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    cfg = compose_cfg("model=imagenet256_dit", f"model.cache_dir={tmp_path}")["model"]
    with pytest.raises(NfebenchError, match=r"facebook/DiT-XL-2-256@main/transformer is not in .* unreachable"):
        build_model(cfg)


def test_a_cached_repo_loads_offline_by_repo_id(tmp_path, monkeypatch):
    """The hub-cache layout (models--org--name/snapshots/<commit>/...) is found by repo id, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--google--ddpm-cifar10-32"
    commit = "0" * 40
    tiny_unet(32).save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = build_model(compose_cfg("model=cifar10_ddpm", f"model.cache_dir={tmp_path}")["model"])
    assert model.describe()["source"] == {"loaded_from": "hub", "repo_id": "google/ddpm-cifar10-32", "path": None,
                                          "revision": None, "commits": {"unet": commit}}


def test_edm_pickles_without_the_file_name_it_and_its_url_in_one_line(tmp_path, monkeypatch):
    # EDM pickles now load (tests/test_models_edm.py); without the file the error says where to get it.
    monkeypatch.setenv("NFEBENCH_CKPT_DIR", str(tmp_path))
    with pytest.raises(NfebenchError, match=r"checkpoint edm-cifar10-32x32-uncond-vp\.pkl not found .*nvlabs-fi-cdn"):
        build_model(compose_cfg("model=cifar10_edm")["model"])


@pytest.mark.slow
def test_cli_offline_error_exits_2_with_one_line_and_no_record(tmp_path):
    home = tmp_path / "hf_home"
    home.mkdir()
    r = launch("model=cifar10_ddpm", f"hydra.run.dir={tmp_path / 'run'}",
               env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub")})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nfebench: error: ") and "google/ddpm-cifar10-32" in lines[0]
    assert not (tmp_path / "run" / "record.json").exists()


@pytest.mark.slow
def test_cli_corrupt_checkpoint_exits_2_with_one_line(tmp_path):
    d = save_checkpoint("cifar10_ddpm", tmp_path)
    (d / "diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    r = launch("model=cifar10_ddpm", f"model.path={d}", "metrics=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot load UNet2DModel" in r.stderr and not (tmp_path / "run" / "record.json").exists()
