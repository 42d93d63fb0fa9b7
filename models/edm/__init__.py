"""EDM's published checkpoints (Karras et al. 2022) as nfebench denoisers.

`build_edm` (family `edm_pickle`) finds the file, reads it with the restricted unpickler of
checkpoint.py, builds nfebench's own preconditioner + U-Net from the recorded kwargs and wraps
it: D(x; sigma, class) is the x0 prediction at sigma = sigma_t / alpha_t of whatever noise
schedule the model config names (`edm`, or EDM's VP schedule for DPM-Solver-style grids).
"""
from __future__ import annotations

import torch

from common.errors import NfebenchError

from ..pretrained import NetworkDenoiser, class_labels as draw_labels, network_dtype as parse_dtype
from .checkpoint import load_network, locate, sha256
from .precond import PRECONDS


class FileSource:
    def __init__(self, path, file, url, digest):
        self.path, self.file, self.url, self.sha256 = str(path), file, url, digest

    def describe(self) -> dict:
        return {"loaded_from": "path", "path": self.path, "file": self.file, "url": self.url, "sha256": self.sha256}


class EDMDenoiser(NetworkDenoiser):
    """x0 = D(x / alpha_t; sigma_t / alpha_t, one-hot class) with EDM's preconditioned network."""

    def __init__(self, noise, net, net_dtype, source, labels=None):
        shape = (net.img_channels, net.img_resolution, net.img_resolution)
        net.model.to(net_dtype)  # the U-Net only: the preconditioner's own tables (iDDPM's sigma levels) stay float32
        super().__init__(noise, net, "x0", shape, net_dtype, None, source)
        self.num_classes = int(net.label_dim)
        self.labels = list(labels) if labels else None
        bad = [v for v in self.labels or () if not 0 <= int(v) < self.num_classes]
        if self.labels and not self.num_classes:
            raise NfebenchError("model.class_labels is set but this checkpoint is unconditional")
        if bad:
            raise NfebenchError(f"model.class_labels must lie in [0, {self.num_classes}); got {bad[:5]}")
        if self.num_classes:
            self.conditions = self._conditions

    def _conditions(self, seed: int, indices) -> torch.Tensor:
        return torch.tensor(draw_labels(seed, indices, self.num_classes, self.labels), dtype=torch.long)

    def predict(self, x, t, cond=None):
        self._place(x.device)
        sigma, a = float(self.noise.edm_sigma(t)), float(self.noise.alpha(t))
        onehot = None
        if self.num_classes:
            if cond is None:
                raise NfebenchError("a class-conditional model was called without class labels")
            # scatter, not F.one_hot: one_hot reads the labels' min and max on the host (labels are checked at load)
            cond = cond.to(x.device)
            onehot = torch.zeros(len(cond), self.num_classes, device=x.device).scatter_(1, cond[:, None], 1.0)
        sig = torch.full((len(x),), sigma, dtype=torch.float32, device=x.device)
        return self.net(x / a if a != 1.0 else x, sig, onehot).to(x.dtype)

    def describe(self) -> dict:
        d = super().describe()
        d.update(precond=type(self.net).__name__, unet=type(self.net.model).__name__, label_dim=self.num_classes,
                 net_sigma_range=[_finite(self.net.sigma_min), _finite(self.net.sigma_max)])
        if self.num_classes:
            d["class_labels"] = "per sample from (seed, i)" if self.labels is None else self.labels
        return d


def build_edm(noise, *, file, url=None, path=None, resolution=None, channels=None, label_dim=None,
              network_dtype="float32", class_labels=None, sampler=None):
    """`sampler` is the EDM paper's setting for this checkpoint, recorded in the model config only."""
    dt = parse_dtype(network_dtype)
    p = locate(file, url, path)
    net, _ = load_network(p, PRECONDS)
    check_shape(p, net, {"img_resolution": resolution, "img_channels": channels, "label_dim": label_dim})
    return EDMDenoiser(noise, net, dt, FileSource(p, file, url, sha256(p)), class_labels)


def _finite(v):
    # EDMPrecond's unbounded sigma_max is recorded as null: records stay strict JSON
    v = float(v)
    return v if v != float("inf") else None


def check_shape(path, net, expect: dict) -> None:
    bad = [f"{k}={getattr(net, k)} (model config expects {v})" for k, v in expect.items()
           if v is not None and getattr(net, k) != v]
    if bad:
        raise NfebenchError(f"checkpoint {path} does not match the model config: {', '.join(bad)}")
