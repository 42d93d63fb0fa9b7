"""save_samples: write every sample as it is produced, one atomic file at a time.

``save_samples: false`` (default) writes nothing; ``true`` or ``png`` writes
``samples/<index:06d>.png`` (8-bit, the same quantisation the FID suites apply), ``npz`` writes
``samples/<first>-<last>.npz`` per batch with uint8 ``images`` (N, C, H, W) and their global
``indices``. Files are named by sample index, so shards of one run write disjoint files into
a shared folder, and each file appears whole or not at all (temp file, then rename). The
folder itself only appears under its final name when the run succeeded.
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from common.errors import NfebenchError
from common.files import atomic_write_bytes, npz_bytes
from common.registry import check_choice
from metrics.features import to_uint8


def _png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def write_png(folder: Path, x: torch.Tensor, indices) -> None:
    for img, i in zip(to_uint8(x).cpu().numpy(), indices):
        atomic_write_bytes(folder / f"{i:06d}.png", _png_bytes(img))


def write_npz(folder: Path, x: torch.Tensor, indices) -> None:
    idx = np.asarray(list(indices), np.int64)
    atomic_write_bytes(folder / f"{idx[0]:06d}-{idx[-1]:06d}.npz", npz_bytes({"images": to_uint8(x).cpu().numpy(),
                                                                               "indices": idx}))


WRITERS = {"png": write_png, "npz": write_npz}


class SampleWriter:
    """Writes into a hidden partial folder; ``commit()`` renames it to ``samples/`` once the run
    succeeded, so a failed run leaves no folder of samples that looks finished."""

    def __init__(self, fmt: str, out_dir):
        self.write_batch = WRITERS[fmt]
        self.final = Path(out_dir) / "samples"
        self.partial = Path(out_dir) / ".samples.partial"

    def __call__(self, x, indices):
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise NfebenchError(f"save_samples needs image samples (B, 1|3, H, W); got shape {tuple(x.shape)}")
        self.partial.mkdir(parents=True, exist_ok=True)
        self.write_batch(self.partial, x, indices)

    def commit(self) -> None:
        if self.final.exists():
            shutil.rmtree(self.final)
        if self.partial.exists():
            os.replace(self.partial, self.final)

    def discard(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)


def sample_writer(setting, out_dir):
    """A SampleWriter, or None when samples are not saved (false). Raises on a bad setting."""
    if setting in (None, False):
        return None
    return SampleWriter(check_choice("save_samples", "png" if setting is True else setting, WRITERS), out_dir)
