"""DeepCache (Ma, Fang & Wang 2024) on diffusers' UNet2DModel: `model.deepcache={interval, branch, skip_type}`.

A UNet's skip branches are the down path's outputs in order: skip 0 is conv_in's output, then every
down resnet (with its attention, if any) and every downsampler adds one. The up resnet that consumes
skip `branch + 1` takes [h, skip] as input, and its h is the high-level feature DeepCache caches: a full
call runs the whole network and keeps that h; a partial call runs conv_in and the down path only until it
has made skip `branch + 1`, then the up path from that resnet on, with the cached h in place of
everything deeper (branch 0 is the shallowest, cheapest partial call, as `branch` counts in the
reference's DDPM code).

Which calls are full: uniform (calls 0, interval, 2*interval, ...), or `quad`, the reference's
quadratic spacing (`sample_from_quad` of its Stable Diffusion pipeline): ceil(N / interval) full calls at
int(x^pow) for x evenly spaced on [0, N^(1/pow)], dense early (high noise), with pow lowered in 0.02 steps
until they are distinct (where the reference gives up at pow 1, this falls back to uniform). The
state (call index, cache) is per batch: each NFE counter starts it afresh with the batch's call count N,
so a sample depends only on (seed, i). A counter that does not know N (calls=None) gets full calls only.
Full calls are the network's own forward (a pre-hook copies h), so interval 1 is the plain network.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from common.errors import NfebenchError
from common.registry import check_choice

SKIP_TYPES = ("uniform", "quad")
OPTIONS = {"interval", "branch", "skip_type", "pow"}
FAMILIES = ("diffusers_unet", "diffusers_ldm")  # the families whose network is a UNet2DModel
DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")


def deepcache_options(opts, family: str | None) -> dict | None:
    """Checked options (interval, branch, skip_type, pow), or None when DeepCache is off (null or {})."""
    if not opts:
        return None
    if not hasattr(opts, "keys"):
        raise NfebenchError(f"model.deepcache must be a mapping {{interval, branch, skip_type, pow}}; got {opts!r}")
    unknown = sorted(set(opts) - OPTIONS)
    if unknown:
        raise NfebenchError(f"model.deepcache: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(OPTIONS))}")
    if family not in FAMILIES:
        raise NfebenchError(f"model.deepcache needs a diffusers UNet2DModel (model families {', '.join(FAMILIES)}); "
                            f"this model's family is '{family}'")
    out = {"interval": opts.get("interval"), "branch": opts.get("branch", 0),
           "skip_type": check_choice("model.deepcache.skip_type", opts.get("skip_type", "uniform"), SKIP_TYPES),
           "pow": opts.get("pow", 1.5)}
    for key, low in (("interval", 1), ("branch", 0)):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise NfebenchError(f"model.deepcache.{key} must be an integer >= {low}; got {v!r}")
    if isinstance(out["pow"], bool) or not isinstance(out["pow"], (int, float)) or not out["pow"] >= 1:
        raise NfebenchError(f"model.deepcache.pow must be a number >= 1; got {out['pow']!r}")
    out["pow"] = float(out["pow"])
    return out


def full_calls(calls: int | None, interval: int, skip_type: str, pow: float) -> frozenset | None:
    """Indices of the full calls among `calls`; None: calls unknown (then every call is full)."""
    if calls is None:
        return None
    if interval == 1:
        return frozenset(range(calls))
    if skip_type == "uniform":
        return frozenset(range(0, calls, interval))
    wanted = math.ceil(calls / interval)
    p = pow
    while p > 1:
        picks = np.unique((np.linspace(0, calls ** (1 / p), wanted + 1) ** p).astype(np.int64))[:-1]
        if len(picks) == wanted:
            return frozenset(int(i) for i in picks)
        p -= 0.02
    return frozenset(range(0, calls, interval))  # pow too close to 1 for distinct picks: uniform


class DeepCache:
    """Per-batch cached calls of one UNet2DModel (see the module docstring)."""

    def __init__(self, net, interval: int, branch: int, skip_type: str = "uniform", pow: float = 1.5):
        self.net, self.interval, self.branch, self.skip_type, self.pow = net, interval, branch, skip_type, pow
        _check_net(net)
        down = [step for block in net.down_blocks for step in _down_steps(block)]
        up = [step for block in net.up_blocks for step in _up_steps(block)]
        n_skips = 1 + len(down)
        if branch > n_skips - 2:
            raise NfebenchError(f"model.deepcache.branch must lie in [0, {n_skips - 2}] for this UNet "
                                f"({n_skips} skip branches); got {branch}")
        self.down = down[: branch + 1]
        self.up = up[n_skips - 2 - branch:]  # up step p consumes skip n_skips - 1 - p
        self._keep = False
        self.cache = None
        self.up[0][0].register_forward_pre_hook(self._grab)
        self.start(None)

    def describe(self) -> dict:
        return {"interval": self.interval, "branch": self.branch, "skip_type": self.skip_type,
                **({"pow": self.pow} if self.skip_type == "quad" else {})}

    def start(self, calls: int | None) -> None:
        self.index, self.cache = 0, None
        self.full = full_calls(calls, self.interval, self.skip_type, self.pow)

    def kind(self, x) -> str:
        full = (self.full is None or self.index in self.full or self.cache is None
                or self.cache.shape[0] != x.shape[0])
        return "full" if full else "partial"

    def __call__(self, x, timesteps):
        full = self.kind(x) == "full"
        self.index += 1
        if full:
            self._keep = True
            try:
                return self.net(x, timesteps).sample
            finally:
                self._keep = False
        return self._partial(x, timesteps)

    def _grab(self, module, args):
        if self._keep:
            self.cache = args[0]  # [h, skip] concatenated; h is sliced off in the partial call

    def _partial(self, x, timesteps):
        net = self.net
        if net.config.center_input_sample:
            x = 2 * x - 1.0
        steps = timesteps * torch.ones(x.shape[0], dtype=timesteps.dtype, device=timesteps.device)
        emb = net.time_embedding(net.time_proj(steps).to(dtype=net.dtype))
        h = net.conv_in(x)
        skips = [h]
        for step in self.down:
            h = step(h, emb)
            skips.append(h)
        h = self.cache[:, : self.cache.shape[1] - h.shape[1]]
        for resnet, attn, samplers in self.up:
            h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
            if attn is not None:
                h = attn(h)
            for sampler in samplers:
                h = sampler(h, emb)
        h = net.conv_out(net.conv_act(net.conv_norm_out(h)))
        if net.config.time_embedding_type == "fourier":
            h = h / steps.reshape(-1, *([1] * (h.dim() - 1)))
        return h


def _check_net(net) -> None:
    name = type(net).__name__
    if name != "UNet2DModel":
        raise NfebenchError(f"model.deepcache needs a diffusers UNet2DModel; this model's network is a {name}")
    blocks = [type(b).__name__ for b in net.down_blocks] + [type(b).__name__ for b in net.up_blocks]
    bad = sorted({b for b in blocks if b not in DOWN_BLOCKS + UP_BLOCKS})
    if bad or net.class_embedding is not None:
        what = f"block types {', '.join(bad)}" if bad else "class conditioning"
        raise NfebenchError(f"model.deepcache supports UNet2DModels built from {', '.join(DOWN_BLOCKS + UP_BLOCKS)} "
                            f"without class conditioning; this one has {what}")


def _sampler(module, takes_temb: bool):
    return (lambda h, emb: module(h, temb=emb)) if takes_temb else (lambda h, emb: module(h))


def _down_steps(block) -> list:
    """One callable per skip the block adds, in the order diffusers' forward makes them."""
    attns = getattr(block, "attentions", None) or [None] * len(block.resnets)

    def res_step(resnet, attn):
        return (lambda h, emb: resnet(h, emb)) if attn is None else (lambda h, emb: attn(resnet(h, emb)))

    steps = [res_step(r, a) for r, a in zip(block.resnets, attns)]
    if block.downsamplers is not None:
        resnet_type = getattr(block, "downsample_type", None) == "resnet"
        samplers = [_sampler(d, resnet_type) for d in block.downsamplers]

        def down(h, emb):
            for s in samplers:
                h = s(h, emb)
            return h

        steps.append(down)
    return steps


def _up_steps(block) -> list:
    """(resnet, attention or None, samplers after it) per up resnet: the block's upsamplers follow its last one."""
    attns = getattr(block, "attentions", None) or [None] * len(block.resnets)
    resnet_type = getattr(block, "upsample_type", None) == "resnet"
    ups = [_sampler(u, resnet_type) for u in (block.upsamplers or [])]
    last = len(block.resnets) - 1
    return [(r, a, ups if j == last else []) for j, (r, a) in enumerate(zip(block.resnets, attns))]
