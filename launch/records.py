"""Run records: one self-describing JSON per run, written atomically (temp file, then rename)."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from common.errors import NfebenchError

from common.paths import REPO

RECORD_NAME = "record.json"
STATE_NAME = "metric_state.npz"  # mergeable metric statistics, written before the record


# Keys every record has; a file without them is not a record (e.g. hand-edited or from another tool).
REQUIRED_KEYS = ("status", "config", "config_hash", "model", "solver", "nfe", "samples", "metrics", "timing")


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


def load_record(path) -> dict:
    """One record.json as a dict; NfebenchError naming the file if it is unreadable, not JSON or lacks keys."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except OSError as err:
        raise NfebenchError(f"cannot read record {path}: {err.strerror}") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise NfebenchError(f"corrupt record {path} (not JSON: {str(err).splitlines()[0]})") from None
    if not isinstance(rec, dict):
        raise NfebenchError(f"corrupt record {path} (not a JSON object)")
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        raise NfebenchError(f"corrupt record {path} (missing keys: {', '.join(missing)})")
    return rec


def move_aside(path) -> Path | None:
    """Rename a bad record to record.json.corrupt-<time> next to it (never delete data); None if it is gone."""
    path = Path(path)
    dest = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    try:
        os.rename(path, dest)  # atomic: of two processes finding the same file, exactly one moves it
    except FileNotFoundError:
        return None
    return dest


def read_records(root: Path, on_bad=None) -> list[dict]:
    """Every complete record under root, with its path as "_path".

    A corrupt record raises NfebenchError naming it, unless on_bad(path, error) is given: then it is
    called and the file skipped.
    """
    out = []
    for p in sorted(Path(root).rglob(RECORD_NAME)):
        try:
            rec = load_record(p)
        except NfebenchError as err:
            if on_bad is None:
                raise
            on_bad(p, err)
            continue
        if rec.get("status") == "complete":
            rec["_path"] = str(p)
            out.append(rec)
    return out


def setup_block(row_evals: int, network_evals: int, num_samples: int) -> dict:
    """The record's nfe.setup: evaluations on run-level state that later samples share (dlg's persistent chains),
    counted apart from the per-sample NFE, with their share per output sample."""
    return {"row_evals": row_evals, "network_evals": network_evals, "nfe_per_sample": row_evals / num_samples}
