"""Reference statistics (mu, sigma) for FID: a user's npz, or an image folder computed once and cached.

The cache key is sha256 of (extractor name + weights sha256, reference content hash, resize
mode), so a changed file, extractor or resize never reuses stale statistics. Each cache file
stores a checksum of its own arrays; a truncated or corrupt file is detected and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from sampling.errors import NfebenchError

from .features import file_sha256
from .moments import RunningMoments

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
DEFAULT_CACHE = "~/.cache/nfebench/fid_stats"


def cache_dir(path: str | None) -> Path:
    d = Path(path or os.environ.get("NFEBENCH_FID_CACHE") or DEFAULT_CACHE).expanduser().resolve()
    if "site-packages" in d.parts:
        raise NfebenchError(f"FID cache dir {d} is inside site-packages; choose another metrics.cache_dir")
    return d


def _checksum(mu, sigma, n) -> str:
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(mu, np.float64), np.ascontiguousarray(sigma, np.float64), np.int64(n)):
        h.update(np.asarray(a).tobytes())
    return h.hexdigest()


def load_npz_reference(path) -> dict:
    p = Path(path).expanduser()
    try:
        with np.load(p) as z:
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
            n = int(z["n"]) if "n" in z.files else None
    except FileNotFoundError:
        raise NfebenchError(f"FID reference statistics not found: {p}") from None
    except Exception as err:
        raise NfebenchError(f"cannot read FID reference {p} (needs arrays 'mu' and 'sigma'): {err}") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise NfebenchError(f"FID reference {p}: mu {mu.shape} and sigma {sigma.shape} do not match")
    return {"mu": mu, "sigma": sigma, "n": n, "id": f"npz:{p.resolve()}", "sha256": file_sha256(p)}


def image_files(folder: Path) -> list[Path]:
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise NfebenchError(f"FID reference folder {folder} holds no {'/'.join(IMAGE_EXTS)} images")
    return files


def folder_hash(folder: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(folder)).encode() + b"\0" + file_sha256(f).encode())
    return h.hexdigest()


def _load_image(path: Path) -> torch.Tensor:
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("L" if im.mode in ("L", "I", "I;16", "1") else "RGB")
        a = np.asarray(im, dtype=np.float64)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(a / 127.5 - 1)


def _stream_stats(extractor, files, batch: int) -> RunningMoments:
    moments = RunningMoments(extractor.feature_dim)
    group: list = []

    def flush():
        if group:
            feats, _ = extractor(torch.stack(group))
            moments.update(feats.double().cpu().numpy())
            group.clear()

    for f in files:
        img = _load_image(f)
        # Only same-sized images can share a batch; the extractor resizes each to its input size.
        if group and (img.shape != group[0].shape or len(group) >= batch):
            flush()
        group.append(img)
    flush()
    return moments


def folder_reference(extractor, folder, cache: str | None = None, batch: int = 50) -> dict:
    folder = Path(folder).expanduser().resolve()
    files = image_files(folder)
    ref_hash = folder_hash(folder, files)
    key_src = {"extractor": extractor.name, "extractor_sha256": extractor.sha256, "reference": ref_hash,
               "resize_mode": extractor.resize_mode, "input_range": list(extractor.input_range)}
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()
    path = cache_dir(cache) / f"{key}.npz"
    info = {"id": f"folder:{folder}", "sha256": ref_hash, "cache_file": str(path)}
    cached = _read_cache(path)
    if cached is not None:
        return {**cached, **info, "cache": "hit"}
    m = _stream_stats(extractor, files, batch)
    mu, sigma = m.mean, m.cov()
    _write_cache(path, mu, sigma, m.n)
    return {"mu": mu, "sigma": sigma, "n": m.n, **info, "cache": "built"}


def _read_cache(path: Path) -> dict | None:
    """None when absent or unusable: a damaged file is rebuilt, never trusted."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            mu, sigma, n, check = z["mu"], z["sigma"], int(z["n"]), str(z["checksum"])
    except Exception:
        return None
    if _checksum(mu, sigma, n) != check:
        return None
    return {"mu": mu, "sigma": sigma, "n": n}


def _write_cache(path: Path, mu, sigma, n) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma, n=np.int64(n), checksum=np.asarray(_checksum(mu, sigma, n)))
    os.replace(tmp, path)  # atomic: concurrent jobs see the old file or the whole new one
