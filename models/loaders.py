"""Builders for the pretrained families: model config -> checked, loaded denoiser.

Each checks the loaded networks against the model config (resolution, channels, latent
shape, classes) so that a wrong checkpoint fails in one line before any sampling.
"""
from __future__ import annotations

from pathlib import Path

from common.errors import NfebenchError

from .hf import load_component, make_source, snapshot_commit
from . import pretrained as P
from .pretrained import GuidedDiTDenoiser, LatentUNetDenoiser, UNetDenoiser, check_network
from common.paths import REPO


def _source(repo_id, path, revision, cache_dir):
    # A relative model.path is relative to the repository (so the committed digits_unet works from any cwd).
    if path and not Path(str(path)).expanduser().is_absolute() and (REPO / str(path)).exists():
        path = str(REPO / str(path))
    return make_source(repo_id, path, revision, cache_dir)


def _shape(v, n, key):
    if not isinstance(v, (list, tuple)) or len(v) != n or not all(isinstance(i, int) and i > 0 for i in v):
        raise NfebenchError(f"model.{key} must be a list of {n} positive integers; got {v!r}")
    return tuple(v)


def build_unet(noise, *, resolution, channels, prediction="eps", repo_id=None, path=None, revision=None,
               cache_dir=None, subfolder=None, network_dtype="float32", time_input="model_time",
               learned_sigma=False):
    src, dt = _source(repo_id, path, revision, cache_dir), P.network_dtype(network_dtype)
    net = load_component("UNet2DModel", src, subfolder, dt)
    check_network(src.label(subfolder), net, {"sample_size": resolution, "in_channels": channels,
                                              "out_channels": channels * (2 if learned_sigma else 1)})
    model = UNetDenoiser(noise, net, prediction, (channels, *P.size2(resolution)), dt, P.time_input(time_input), src)
    return _with_commits(model, src, unet=subfolder)


def build_ldm(noise, *, latent_shape, image_shape, prediction="eps", repo_id=None, path=None, revision=None,
              cache_dir=None, unet_subfolder="unet", vqvae_subfolder="vqvae", latent_scale=1.0,
              network_dtype="float32", time_input="model_time"):
    c, h, w = _shape(latent_shape, 3, "latent_shape")
    ci, hi, wi = _shape(image_shape, 3, "image_shape")
    src, dt = _source(repo_id, path, revision, cache_dir), P.network_dtype(network_dtype)
    unet = load_component("UNet2DModel", src, unet_subfolder, dt)
    check_network(src.label(unet_subfolder), unet, {"sample_size": [h, w], "in_channels": c, "out_channels": c})
    vq = load_component("VQModel", src, vqvae_subfolder, dt)
    check_network(src.label(vqvae_subfolder), vq, {"latent_channels": c, "in_channels": ci, "out_channels": ci})
    _check_factor(src.label(vqvae_subfolder), vq, (h, w), (hi, wi))
    model = LatentUNetDenoiser(noise, unet, vq, prediction, (c, h, w), (ci, hi, wi), dt, P.time_input(time_input), src,
                               latent_scale)
    return _with_commits(model, src, unet=unet_subfolder, vqvae=vqvae_subfolder)


def build_dit(noise, *, latent_shape, image_shape, num_classes, guidance_scale, class_labels=None,
              guidance_channels=None, prediction="eps", repo_id=None, path=None, revision=None, cache_dir=None,
              transformer_subfolder="transformer", vae_subfolder="vae", latent_scale=None, learned_sigma=True,
              network_dtype="float32", time_input="model_time"):
    c, h, w = _shape(latent_shape, 3, "latent_shape")
    ci, hi, wi = _shape(image_shape, 3, "image_shape")
    src, dt = _source(repo_id, path, revision, cache_dir), P.network_dtype(network_dtype)
    dit = load_component("DiTTransformer2DModel", src, transformer_subfolder, dt)
    check_network(src.label(transformer_subfolder), dit,
                  {"sample_size": h, "in_channels": c, "out_channels": c * (2 if learned_sigma else 1),
                   "num_embeds_ada_norm": num_classes})
    vae = load_component("AutoencoderKL", src, vae_subfolder, dt)
    check_network(src.label(vae_subfolder), vae, {"latent_channels": c, "in_channels": ci, "out_channels": ci})
    _check_factor(src.label(vae_subfolder), vae, (h, w), (hi, wi))
    scale = latent_scale if latent_scale is not None else vae.config.get("scaling_factor", 1.0)
    model = GuidedDiTDenoiser(noise, dit, vae, prediction, (c, h, w), (ci, hi, wi), dt, P.time_input(time_input), src,
                              scale, num_classes, guidance_scale, class_labels, guidance_channels)
    return _with_commits(model, src, transformer=transformer_subfolder, vae=vae_subfolder)


def _with_commits(model, src, **subfolders):
    model.commits = {k: c for k, sub in subfolders.items() if (c := snapshot_commit(src, sub))}
    return model


def _check_factor(label, ae, latent_hw, image_hw):
    # Each encoder block after the first halves the resolution.
    f = 2 ** (len(ae.config.block_out_channels) - 1)
    if (latent_hw[0] * f, latent_hw[1] * f) != tuple(image_hw):
        raise NfebenchError(f"checkpoint {label} does not match the model config: it maps {list(latent_hw)} latents "
                            f"to {[latent_hw[0] * f, latent_hw[1] * f]} images, the model config expects {list(image_hw)}")

