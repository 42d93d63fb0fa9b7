"""EDM's two U-Nets: SongUNet (DDPM++ / NCSN++ of Song et al. 2021) and DhariwalUNet (ADM).

Module names (`enc.32x32_block0`, `dec.16x16_aux_conv`, ...) are those of NVlabs' modules, so
published state dicts load unchanged. Constructor keywords are the ones EDM's pickles record.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import silu

from .layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, UNetBlock



def open_decoder_level(dec: nn.ModuleDict, r: int, c: int, innermost: bool, blk: dict) -> None:
    """The blocks that open a decoder level in both of EDM's U-Nets: two (the first with attention) at the
    innermost level, an upsampling block elsewhere. Key names are EDM's, so state dicts load as they are."""
    if innermost:
        dec[f"{r}x{r}_in0"] = UNetBlock(c, c, attention=True, **blk)
        dec[f"{r}x{r}_in1"] = UNetBlock(c, c, **blk)
    else:
        dec[f"{r}x{r}_up"] = UNetBlock(c, c, up=True, **blk)

class SongUNet(nn.Module):
    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=128,
                 channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4, attn_resolutions=(16,), dropout=0.10,
                 label_dropout=0, embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                 decoder_type="standard", resample_filter=(1, 1)):
        super().__init__()
        if embedding_type not in ("positional", "fourier") or encoder_type not in ("standard", "skip", "residual") \
                or decoder_type not in ("standard", "skip"):
            raise ValueError(f"unsupported SongUNet variant: {embedding_type}/{encoder_type}/{decoder_type}")
        emb_ch, noise_ch = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        blk = dict(emb_channels=emb_ch, num_heads=1, skip_scale=math.sqrt(0.5), eps=1e-6,
                   resample_filter=resample_filter, resample_proj=True, adaptive_scale=False)
        self.map_noise = (PositionalEmbedding(noise_ch, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_ch))
        self.map_label = Linear(label_dim, noise_ch) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_ch, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_ch, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)

        self.enc = nn.ModuleDict()
        c = caux = in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            if level == 0:
                self.enc[f"{r}x{r}_conv"] = Conv2d(c, model_channels, 3)
                c = model_channels
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(c, c, down=True, **blk)
                if encoder_type == "skip":
                    self.enc[f"{r}x{r}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=resample_filter)
                    self.enc[f"{r}x{r}_aux_skip"] = Conv2d(caux, c, 1)
                if encoder_type == "residual":
                    self.enc[f"{r}x{r}_aux_residual"] = Conv2d(caux, c, 3, down=True, resample_filter=resample_filter,
                                                               fused_resample=True)
                    caux = c
            for i in range(num_blocks):
                self.enc[f"{r}x{r}_block{i}"] = UNetBlock(c, model_channels * mult, attention=r in attn_resolutions,
                                                          **blk)
                c = model_channels * mult
        skips = [b.out_channels for name, b in self.enc.items() if "aux" not in name]

        self.dec = nn.ModuleDict()
        last = len(channel_mult) - 1
        for level, mult in reversed(list(enumerate(channel_mult))):
            r = img_resolution >> level
            open_decoder_level(self.dec, r, c, level == last, blk)
            for i in range(num_blocks + 1):
                self.dec[f"{r}x{r}_block{i}"] = UNetBlock(c + skips.pop(), model_channels * mult,
                                                          attention=i == num_blocks and r in attn_resolutions, **blk)
                c = model_channels * mult
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < last:
                    self.dec[f"{r}x{r}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                         resample_filter=resample_filter)
                self.dec[f"{r}x{r}_aux_norm"] = GroupNorm(c, eps=1e-6)
                self.dec[f"{r}x{r}_aux_conv"] = Conv2d(c, out_channels, 3)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(len(emb), 2, -1).flip(1).reshape(emb.shape)  # Song et al. order: [sin | cos]
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer1(silu(self.map_layer0(emb))))

        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        out = h = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                out = block(out)
            elif "aux_norm" in name:
                h = block(x)
            elif "aux_conv" in name:
                h = block(silu(h))
                out = h if out is None else h + out
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return out


class DhariwalUNet(nn.Module):
    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=192,
                 channel_mult=(1, 2, 3, 4), channel_mult_emb=4, num_blocks=3, attn_resolutions=(32, 16, 8),
                 dropout=0.10, label_dropout=0):
        super().__init__()
        emb_ch = model_channels * channel_mult_emb
        blk = dict(emb_channels=emb_ch, channels_per_head=64)
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)
        self.map_label = Linear(label_dim, emb_ch, bias=False) if label_dim else None

        self.enc = nn.ModuleDict()
        c = in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            if level == 0:
                self.enc[f"{r}x{r}_conv"] = Conv2d(c, model_channels * mult, 3)
                c = model_channels * mult
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(c, c, down=True, **blk)
            for i in range(num_blocks):
                self.enc[f"{r}x{r}_block{i}"] = UNetBlock(c, model_channels * mult, attention=r in attn_resolutions,
                                                          **blk)
                c = model_channels * mult
        skips = [b.out_channels for b in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            r = img_resolution >> level
            open_decoder_level(self.dec, r, c, level == len(channel_mult) - 1, blk)
            for i in range(num_blocks + 1):
                self.dec[f"{r}x{r}_block{i}"] = UNetBlock(c + skips.pop(), model_channels * mult,
                                                          attention=r in attn_resolutions, **blk)
                c = model_channels * mult
        self.out_norm = GroupNorm(c)
        self.out_conv = Conv2d(c, out_channels, 3)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels)
        emb = silu(emb)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(silu(self.out_norm(x)))
