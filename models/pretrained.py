"""Pretrained diffusers networks behind the one denoiser interface.

Three kinds, each a registered family (models/registry.py):
- `diffusers_unet`: a pixel-space UNet2DModel (DDPM CIFAR-10 / CelebA-HQ / LSUN, digits_unet);
- `diffusers_ldm`: a UNet2DModel in the latent space of a VQModel that decodes after sampling;
- `diffusers_dit`: a class-conditional DiTTransformer2DModel in an AutoencoderKL latent space,
  with classifier-free guidance.

The solvers see only `model(x, t)`: the network runs in `network_dtype` on the device of x
and its output returns in the solver's dtype. Conditioning (class labels) is per sample, from
`conditions(seed, indices)`, and is bound by the NFE counter; decoding is `decode(x)`, run
after sampling and never counted as an NFE.
"""
from __future__ import annotations

import numpy as np
import torch

from common.errors import NfebenchError
from common.registry import check_choice

from .denoiser import Denoiser, check_prediction
from .hf import Source

NETWORK_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# What the network receives as its time input, by name: the schedule's own model time (the fractional
# DDPM step for vp_discrete). A network trained on another convention (e.g. sigma) registers it here.
TIME_INPUTS = {"model_time": lambda noise, t: noise.model_time(t)}

LABEL_STREAM = 0x1ABE1  # keeps class-label draws apart from the (seed, i) noise stream


def network_dtype(name: str) -> torch.dtype:
    return NETWORK_DTYPES[check_choice("model.network_dtype", name, NETWORK_DTYPES)]


def time_input(name: str):
    return TIME_INPUTS[check_choice("model.time_input", name, TIME_INPUTS)]


def size2(v) -> tuple:
    """(height, width) of a size given as one int (square) or as a pair."""
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def check_network(label: str, net, expect: dict) -> None:
    """The checkpoint's own config against what the model config says it should be."""
    got = {k: (size2(net.config[k]) if k == "sample_size" else net.config[k]) for k in expect}
    want = {k: (size2(v) if k == "sample_size" else v) for k, v in expect.items()}
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    if bad:
        diff = ", ".join(f"{k}={g} (model config expects {w})" for k, (g, w) in bad.items())
        raise NfebenchError(f"checkpoint {label} does not match the model config: {diff}")


def num_params(*nets) -> int:
    return int(sum(p.numel() for n in nets for p in n.parameters()))


class NetworkDenoiser(Denoiser):
    """Shared plumbing: device/dtype handling, the time input, the record's description."""

    latent = False

    def __init__(self, noise, net, prediction, shape, net_dtype, time_fn, source: Source, extra_nets=()):
        self.noise, self.net, self.shape = noise, net.eval().requires_grad_(False), tuple(shape)
        self.prediction = check_prediction(prediction)
        self.net_dtype, self.time_fn, self.source = net_dtype, time_fn, source
        self._nets = [self.net, *(n.eval().requires_grad_(False) for n in extra_nets)]
        self._device = None
        self.commits: dict = {}  # hub commit per component, filled in by the loader

    def _place(self, device) -> None:
        # The run decides the device after building the model; the networks follow the first batch there.
        if self._device != device:
            for n in self._nets:
                n.to(device)
            self._device = device

    def _timesteps(self, t: float, n: int, device) -> torch.Tensor:
        return torch.full((n,), float(self.time_fn(self.noise, t)), dtype=torch.float32, device=device)

    def predict(self, x, t, cond=None):
        self._place(x.device)
        out = self.forward(x.to(self.net_dtype), self._timesteps(t, len(x), x.device), cond)
        return out[:, : self.shape[0]].to(x.dtype)  # drops a learned-variance half, if any

    def forward(self, x, timesteps, cond):
        raise NotImplementedError

    def describe(self) -> dict:
        return {**super().describe(), "source": {**self.source.describe(), "commits": self.commits},
                "network_dtype": str(self.net_dtype)[6:],
                "networks": [type(n).__name__ for n in self._nets], "num_params": num_params(*self._nets)}


class UNetDenoiser(NetworkDenoiser):
    """Pixel space: the sample is the image. `model.deepcache` caches its deep features (models/deepcache.py)."""

    deepcache = None

    def use_deepcache(self, opts: dict) -> None:
        from .deepcache import DeepCache

        self.deepcache = DeepCache(self.net, **opts)

    def start_batch(self, calls: int | None) -> None:
        # the NFE counter of each batch calls this: no cached feature outlives its batch
        if self.deepcache is not None:
            self.deepcache.start(calls)

    def next_call_kind(self, x) -> str:
        return "full" if self.deepcache is None else self.deepcache.kind(x)

    def forward(self, x, timesteps, cond):
        if self.deepcache is not None:
            return self.deepcache(x, timesteps)
        return self.net(x, timesteps).sample

    def describe(self) -> dict:
        return {**super().describe(), **({"deepcache": self.deepcache.describe()} if self.deepcache else {})}


class LatentMixin:
    """Latent space: decode(z) turns final latents into images in [-1, 1] (not an NFE)."""

    latent = True

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._place(z.device)
        with torch.no_grad():
            img = self.decode_latents(z.to(self.net_dtype) / self.latent_scale)
        return img.clamp(-1, 1).to(z.dtype)


class LatentUNetDenoiser(LatentMixin, UNetDenoiser):
    def __init__(self, noise, net, vq, prediction, shape, image_shape, net_dtype, time_fn, source, latent_scale):
        super().__init__(noise, net, prediction, shape, net_dtype, time_fn, source, extra_nets=(vq,))
        self.vq, self.image_shape, self.latent_scale = vq, tuple(image_shape), float(latent_scale)

    def decode_latents(self, z):
        return self.vq.decode(z).sample  # quantises first, as the LDM pipeline does


def class_labels(seed: int, indices, num_classes: int, labels=None) -> list[int]:
    """Sample i's label: labels[i mod len(labels)] if given, else a draw from (seed, i) alone."""
    if labels:
        return [int(labels[i % len(labels)]) for i in indices]
    return [int(np.random.default_rng([int(seed), int(i), LABEL_STREAM]).integers(num_classes)) for i in indices]


class GuidedDiTDenoiser(LatentMixin, NetworkDenoiser):
    """Class-conditional DiT with classifier-free guidance.

    One call is one NFE: the conditional and unconditional halves run as one doubled batch
    (two network batch evaluations), and eps = uncond + scale * (cond - uncond) on the
    guided channels. The doubled batch runs at every scale, so an NFE costs the same whatever
    the scale (scale 1 is the conditional model, scale 0 the unconditional one).
    """

    evals_per_call = 2

    def __init__(self, noise, net, vae, prediction, shape, image_shape, net_dtype, time_fn, source, latent_scale,
                 num_classes, guidance_scale, labels=None, guidance_channels=None):
        super().__init__(noise, net, prediction, shape, net_dtype, time_fn, source, extra_nets=(vae,))
        self.vae, self.image_shape, self.latent_scale = vae, tuple(image_shape), float(latent_scale)
        self.num_classes, self.guidance_scale = int(num_classes), float(guidance_scale)
        self.labels = list(labels) if labels else None
        self.guidance_channels = int(guidance_channels or shape[0])
        bad = [v for v in self.labels or () if not 0 <= int(v) < self.num_classes]
        if bad:
            raise NfebenchError(f"model.class_labels must lie in [0, {self.num_classes}); got {bad[:5]}")

    def conditions(self, seed: int, indices) -> torch.Tensor:
        return torch.tensor(class_labels(seed, indices, self.num_classes, self.labels), dtype=torch.long)

    def forward(self, x, timesteps, cond):
        if cond is None:
            raise NfebenchError("a class-conditional model was called without class labels")
        y = cond.to(x.device)
        null = torch.full_like(y, self.num_classes)  # DiT's label-dropout class is index num_classes
        out = self.net(torch.cat([x, x]), timestep=torch.cat([timesteps, timesteps]),
                       class_labels=torch.cat([y, null])).sample
        cond_out, uncond_out = out.chunk(2)
        k = self.guidance_channels
        guided = uncond_out[:, :k] + self.guidance_scale * (cond_out[:, :k] - uncond_out[:, :k])
        return torch.cat([guided, cond_out[:, k:]], dim=1)

    def decode_latents(self, z):
        return self.vae.decode(z).sample

    def describe(self) -> dict:
        return {**super().describe(), "guidance_scale": self.guidance_scale, "num_classes": self.num_classes,
                "class_labels": "per sample from (seed, i)" if self.labels is None else self.labels,
                "guidance_channels": self.guidance_channels, "network_evals_per_nfe": self.evals_per_call}
