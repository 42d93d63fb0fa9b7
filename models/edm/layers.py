"""The building blocks of EDM's networks (Karras et al. 2022, training/networks.py), written for nfebench.

Attribute names, parameter shapes and registered buffers follow NVlabs' modules one for one, so
that a state dict read from a published pickle loads with `strict=True`. Only inference is
implemented: no initialisation schemes (weights always come from a checkpoint) and no dropout.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import conv2d, conv_transpose2d, group_norm, silu


class Linear(nn.Module):
    def __init__(self, in_features, out_features, bias=True, **_init):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        y = x @ self.weight.to(x.dtype).t()
        return y if self.bias is None else y + self.bias.to(x.dtype)


def _binomial(taps) -> torch.Tensor:
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum() ** 2)[None, None]


class Conv2d(nn.Module):
    """3x3/1x1 convolution (kernel 0: none) with optional 2x FIR up- or downsampling.

    Unfused: resample first (up) or first (down), then convolve. Fused (NCSN++'s residual
    encoder path, downsampling only in practice): convolve, then the strided filter.
    """

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False, resample_filter=(1, 1),
                 fused_resample=False, **_init):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel, kernel)) if kernel else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        self.register_buffer("resample_filter", _binomial(resample_filter) if up or down else None)

    def forward(self, x):
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        wp = 0 if w is None else w.shape[-1] // 2
        fp = 0 if f is None else (f.shape[-1] - 1) // 2
        if self.fused_resample and w is not None and self.up:
            x = conv_transpose2d(x, (4 * f).tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2,
                                 padding=max(fp - wp, 0))
            x = conv2d(x, w, padding=max(wp - fp, 0))
        elif self.fused_resample and w is not None and self.down:
            x = conv2d(x, w, padding=wp + fp)
            x = conv2d(x, f.tile(self.out_channels, 1, 1, 1), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = conv_transpose2d(x, (4 * f).tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2,
                                     padding=fp)
            if self.down:
                x = conv2d(x, f.tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2, padding=fp)
            if w is not None:
                x = conv2d(x, w, padding=wp)
        return x if self.bias is None else x + self.bias.to(x.dtype).view(1, -1, 1, 1)


class GroupNorm(nn.Module):
    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        # Narrow layers get fewer groups so that each keeps min_channels_per_group channels.
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(nn.Module):
    """Residual block (+ optional self-attention) shared by DDPM++, NCSN++ and ADM."""

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5, resample_filter=(1, 1),
                 resample_proj=False, adaptive_scale=True, **_init):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.num_heads = heads if attention else 0
        self.skip_scale, self.adaptive_scale = float(skip_scale), adaptive_scale
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            k = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, k, up=up, down=down, resample_filter=resample_filter)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.conv0(silu(self.norm0(x)))
        p = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = p.chunk(2, dim=1)
            h = silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = silu(self.norm1(h + p))
        h = self.conv1(h) + (x if self.skip is None else self.skip(x))
        h = h * self.skip_scale
        if self.num_heads:
            h = (self.proj(self._attend(self.norm2(h))) + h) * self.skip_scale
        return h

    def _attend(self, x):
        n, c = x.shape[:2]
        q, k, v = self.qkv(x).reshape(n * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
        # Logits and softmax in float32 whatever the network's dtype, as the original does.
        w = torch.einsum("ncq,nck->nqk", q.float(), k.float() / math.sqrt(k.shape[1])).softmax(dim=2).to(q.dtype)
        return torch.einsum("nqk,nck->ncq", w, v).reshape(x.shape)


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids, [cos | sin]; endpoint=True spans the frequency range inclusively (DDPM++)."""

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        arg = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise level (NCSN++); the frequencies are a stored buffer."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer("freqs", torch.zeros(num_channels // 2))

    def forward(self, x):
        arg = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([arg.cos(), arg.sin()], dim=1)
