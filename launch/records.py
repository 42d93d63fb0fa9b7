"""Run records: one self-describing JSON per run, written atomically (temp file, then rename)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

RECORD_NAME = "record.json"
STATE_NAME = "metric_state.npz"  # mergeable metric statistics, written before the record
REPO = Path(__file__).resolve().parents[1]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n").encode())


def _jsonable(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def config_hash(resolved_cfg: dict) -> str:
    """Identity of a run: the resolved config, minus keys that only say where output goes."""
    blob = json.dumps(resolved_cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "scipy", "hydra-core", "omegaconf", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_state() -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


# What every reader of a record relies on; a record without one of these is damaged.
REQUIRED_KEYS = ("status", "config", "config_hash", "model", "solver", "nfe", "metrics", "samples")


def load_record(path: Path) -> dict:
    """One record.json as a dict; a truncated, non-JSON or key-less file is one error line naming it."""
    from sampling.errors import NfebenchError

    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise NfebenchError(f"cannot read record {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise NfebenchError(f"corrupt record {path}: not valid JSON ({err.msg} at line {err.lineno}, "
                            f"column {err.colno}); truncated?") from None
    if not isinstance(rec, dict):
        raise NfebenchError(f"corrupt record {path}: a JSON {type(rec).__name__}, not an object")
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        raise NfebenchError(f"incomplete record {path}: missing {', '.join(missing)}")
    return rec


def read_records(root: Path) -> list[dict]:
    """Every complete record under root (the collector's only input)."""
    out = []
    for p in sorted(Path(root).rglob(RECORD_NAME)):
        rec = json.loads(p.read_text())
        if rec.get("status") == "complete":
            rec["_path"] = str(p)
            out.append(rec)
    return out
