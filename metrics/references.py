"""Reference statistics for the FID suites: where they come from, how they are cached and checked.

``metrics.reference`` is, in the order tried:
- a dataset name the suite's backend registers (torch-fidelity's ``cifar10-train`` ... for
  ``fid_is``, clean-fid's precomputed statistics for ``clean_fid``): the backend's
  ``named_reference`` says how to get it;
- an image folder: its statistics are computed once and cached;
- an npz with ``mu`` and ``sigma`` (and ``features`` for KID / precision-recall).
Names are tried first, so a folder that happens to be called ``cifar10-train`` needs a path with
a slash (``./cifar10-train``).

The cache key is sha256 of (extractor name + weights sha256, the reference's content hash, resize
mode, input range, and the size of the kept feature subset when KID or precision/recall need one),
so a changed file, extractor or resize never reuses stale statistics. Each cache file stores a
checksum of its own arrays; a truncated or corrupt file is detected and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from common.errors import NfebenchError
from common.checked_npz import read_checked, write_checked

from .features import file_sha256
from .streaming import FeatureStream

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
DEFAULT_CACHE = "~/.cache/nfebench/fid_stats"


def resolve_reference(suite, reference) -> dict:
    """The statistics ``suite`` compares against: mu, sigma, n, an ``id``, and ``subset_feats`` when kept."""
    names = suite.reference_names()
    if not reference:
        raise NfebenchError(f"metrics={suite.suite_name} needs metrics.reference: an npz with mu and sigma, an image "
                            f"folder{', or one of ' + ', '.join(names) if names else ''}")
    name = str(reference)
    if name in names:
        return {**suite.named_reference(name), "id": f"{suite.suite_name}:{name}"}
    p = Path(name).expanduser()
    if p.is_dir():
        return folder_reference(suite.extractor, p, suite.cache_dir, suite.batch, suite.subset_size)
    if p.is_file():
        return load_npz_reference(p)
    raise NfebenchError(f"FID reference not found: '{name}' is not an npz file, an image folder"
                        f"{', or a dataset name for metrics=' + suite.suite_name + ' (' + ', '.join(names) + ')' if names else ''}")


def load_npz_reference(path) -> dict:
    p = Path(path).expanduser()
    try:
        with np.load(p) as z:
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
            n = int(z["n"]) if "n" in z.files else None
            # optional reference features (N x d) for KID / precision-recall
            extra = {"subset_feats": np.asarray(z["features"], np.float32)} if "features" in z.files else {}
    except FileNotFoundError:
        raise NfebenchError(f"FID reference statistics not found: {p}") from None
    except Exception as err:
        raise NfebenchError(f"cannot read FID reference {p} (needs arrays 'mu' and 'sigma'): {err}") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise NfebenchError(f"FID reference {p}: mu {mu.shape} and sigma {sigma.shape} do not match")
    return {"mu": mu, "sigma": sigma, "n": n, "id": f"npz:{p.resolve()}", "sha256": file_sha256(p), **extra}


def folder_reference(extractor, folder, cache: str | None = None, batch: int = 50, subset_size: int = 0) -> dict:
    folder = Path(folder).expanduser().resolve()
    files = image_files(folder)
    ref_hash = folder_hash(folder, files)
    stats = cached_stats(extractor, ref_hash, lambda: ((i, _load_image(f)) for i, f in enumerate(files)),
                         cache, batch, subset_size)
    return {**stats, "id": f"folder:{folder}", "sha256": ref_hash}


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


def stream_images(extractor, images, batch: int, subset_size: int = 0) -> FeatureStream:
    """Moments (and a bounded feature subset) of an iterable of (index, image in [-1, 1])."""
    stream = FeatureStream(extractor.feature_dim, subset_size=subset_size)
    group: list = []
    where: list = []

    def flush():
        if group:
            stream.update(where, extractor(torch.stack(group))[0])
            group.clear()
            where.clear()

    for i, img in images:
        # Only same-sized images can share a batch; the extractor resizes each to its input size.
        if group and (img.shape != group[0].shape or len(group) >= batch):
            flush()
        group.append(img)
        where.append(i)
    flush()
    return stream


def reference_stats(extractor, images, batch: int = 50) -> dict:
    """mu, sigma of a tensor of images in [-1, 1]: how to write a reference npz from a dataset."""
    m = stream_images(extractor, enumerate(images), batch).moments
    return {"mu": m.mean, "sigma": m.cov(), "n": np.int64(m.n)}


# ---- the cache -------------------------------------------------------------------------------

def cache_dir(path: str | None) -> Path:
    d = Path(path or os.environ.get("NFEBENCH_FID_CACHE") or DEFAULT_CACHE).expanduser().resolve()
    if "site-packages" in d.parts:
        raise NfebenchError(f"FID cache dir {d} is inside site-packages; choose another metrics.cache_dir")
    return d


def cache_key(extractor, reference_id: str, subset_size: int) -> str:
    src = {"extractor": extractor.name, "extractor_sha256": extractor.sha256, "reference": reference_id,
           "resize_mode": extractor.resize_mode, "input_range": list(extractor.input_range)}
    if subset_size:  # a cache entry without features cannot serve KID / precision-recall
        src["feature_subset"] = int(subset_size)
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()


def cached_stats(extractor, reference_id: str, images, cache: str | None, batch: int = 50,
                 subset_size: int = 0) -> dict:
    """Statistics of an image source, computed once per (extractor, source, resize, subset) key.

    ``images`` is a zero-argument callable returning an iterable of (index, image): it is only
    called on a cache miss, so a cached reference needs neither its images nor a download.
    """
    path = cache_dir(cache) / f"{cache_key(extractor, reference_id, subset_size)}.npz"
    cached = _read_cache(path)
    if cached is not None and (not subset_size or "subset_feats" in cached):
        return {**cached, "cache_file": str(path), "cache": "hit"}
    from tqdm import tqdm

    # 50k reference images take a while: a bar on a terminal, silent in logs (disable=None)
    progress = tqdm(images(), desc="reference features", unit="img", disable=None, leave=False)
    stream = stream_images(extractor, progress, batch, subset_size)
    m = stream.moments
    arrays = {"mu": m.mean, "sigma": m.cov(), "n": np.int64(m.n),
              **(stream.subset.state() if stream.subset is not None else {})}
    _write_cache(path, arrays)
    return {**arrays, "n": m.n, "cache_file": str(path), "cache": "built"}


def _read_cache(path: Path) -> dict | None:
    """None when absent or unusable: a damaged file is rebuilt, never trusted."""
    arrays = read_checked(path, required=("mu", "sigma"))
    return None if arrays is None else {**arrays, "n": int(arrays["n"])}


def _write_cache(path: Path, arrays: dict) -> None:
    write_checked(path, arrays)
