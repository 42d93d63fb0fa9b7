"""Cache files that check themselves: an npz of arrays plus the sha256 of those arrays.

A truncated, corrupt or hand-edited file fails its checksum and reads as absent, so whoever
caches through here rebuilds it instead of trusting it (FID reference statistics, calibrations).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes, npz_bytes


def checksum(arrays: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode() + np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


def read_checked(path: Path, required=()) -> dict | None:
    """The file's arrays, or None when absent, unreadable, failing its checksum or missing a required key."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        check = str(arrays.pop("checksum"))
    except Exception:
        return None
    if checksum(arrays) != check or any(k not in arrays for k in required):
        return None
    return arrays


def write_checked(path: Path, arrays: dict) -> str:
    """Writes atomically (concurrent jobs see the old file or the whole new one); returns the checksum."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check = checksum(arrays)
    atomic_write_bytes(path, npz_bytes({**arrays, "checksum": np.asarray(check)}))
    return check
