"""EDM's preconditioners: D(x; sigma, class) = c_skip x + c_out F(c_in x; c_noise(sigma), class).

Each wraps a U-Net as `.model` (the name the published state dicts use) and follows Table 1
of Karras et al. 2022: VP and VE are Song et al.'s formulations, iDDPM is Nichol & Dhariwal's
discrete-time model, EDM the paper's own. Inputs and outputs are float32, like the originals;
`use_fp16` is recorded but nfebench runs the network in the precision model.network_dtype picks.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .unets import DhariwalUNet, SongUNet

UNETS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


def _unet(model_type, **kwargs):
    if model_type not in UNETS:
        raise ValueError(f"unknown model_type '{model_type}'")
    return UNETS[model_type](**kwargs)


class _Precond(nn.Module):
    out_mult = 1  # iDDPM's network also predicts a variance: twice the channels

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, model_type="SongUNet", **unet):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim, self.use_fp16 = img_resolution, img_channels, label_dim, use_fp16
        self.model = _unet(model_type, img_resolution=img_resolution, in_channels=img_channels,
                           out_channels=img_channels * self.out_mult, label_dim=label_dim, **unet)

    def forward(self, x, sigma, class_labels=None):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        if self.label_dim:
            class_labels = (torch.zeros(1, self.label_dim, device=x.device) if class_labels is None
                            else class_labels.to(torch.float32).reshape(-1, self.label_dim))
        else:
            class_labels = None
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        # Only the image enters in the network's precision; noise and class labels stay float32, as in the original.
        dtype = next(self.model.parameters()).dtype
        F = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels)
        return c_skip * x + c_out * F[:, : self.img_channels].to(torch.float32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


class VPPrecond(_Precond):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, beta_d=19.9, beta_min=0.1, M=1000,
                 epsilon_t=1e-5, model_type="SongUNet", **unet):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **unet)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.sigma_min, self.sigma_max = float(self.sigma(epsilon_t)), float(self.sigma(1))

    def sigma(self, t):
        # exp(.) - 1 and log(1 + .) rather than expm1/log1p: the float32 rounding the network was trained with
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma):
        # The network was trained on DDPM's time label t * (M - 1) and predicts eps.
        return 1.0, -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(_Precond):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0.02, sigma_max=100,
                 model_type="SongUNet", **unet):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **unet)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def coefficients(self, sigma):
        # Song et al.'s VE models see log(sigma) of data in [0, 1]: half of sigma in [-1, 1] units.
        return 1.0, sigma, 1.0, (0.5 * sigma).log()


class iDDPMPrecond(_Precond):  # noqa: N801 - the class name the pickles carry
    out_mult = 2

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, C_1=0.001, C_2=0.008, M=1000,
                 model_type="DhariwalUNet", **unet):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **unet)
        self.C_1, self.C_2, self.M = C_1, C_2, M
        # u_j: the sigma of discrete step j, from the cosine alpha-bar with clipped step ratios (EDM eq. in App. C.3.4)
        u = torch.zeros(M + 1)
        for j in range(M, 0, -1):
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        self.register_buffer("u", u)
        self.sigma_min, self.sigma_max = float(u[M - 1]), float(u[0])

    def alpha_bar(self, j):
        return torch.sin(0.5 * math.pi * torch.as_tensor(j) / self.M / (self.C_2 + 1)) ** 2

    def step_index(self, sigma):
        flat = sigma.to(self.u.device, torch.float32).reshape(-1, 1)
        return (flat - self.u.reshape(1, -1)).abs().argmin(1).reshape(sigma.shape)

    def round_sigma(self, sigma):
        sigma = torch.as_tensor(sigma)
        return self.u[self.step_index(sigma).flatten()].to(sigma.dtype).reshape(sigma.shape)

    def coefficients(self, sigma):
        return 1.0, -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1 - self.step_index(sigma)).to(torch.float32)


class EDMPrecond(_Precond):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0, sigma_max=float("inf"),
                 sigma_data=0.5, model_type="DhariwalUNet", **unet):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **unet)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def coefficients(self, sigma):
        sd2 = self.sigma_data**2
        return (sd2 / (sigma**2 + sd2), sigma * self.sigma_data / (sigma**2 + sd2).sqrt(), 1 / (sd2 + sigma**2).sqrt(),
                sigma.log() / 4)


PRECONDS = {c.__name__: c for c in (VPPrecond, VEPrecond, iDDPMPrecond, EDMPrecond)}
