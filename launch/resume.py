"""Skip-complete: a run is identified by the hash of its resolved config, never by its directory.

A record exists only once a run finished (records are written atomically, last), so a failed,
cancelled or killed run leaves nothing to find here and simply runs again.
"""
from __future__ import annotations

from pathlib import Path

from .records import config_hash, read_records

# Keys that say how or where to run, not what to compute: they must not change a run's identity.
NON_IDENTITY_KEYS = ("skip_complete", "wandb", "dry_run")
SKIPPED = "skipped"  # the task's return value for a skipped run; the launchers' summary counts it


def identity(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in NON_IDENTITY_KEYS}


def find_complete(cfg: dict, sweep_dir) -> str | None:
    """Path of a complete record under sweep_dir with this config's hash, or None."""
    root = Path(sweep_dir)
    if not root.is_dir():
        return None
    want = config_hash(identity(cfg))
    for rec in read_records(root):
        if rec.get("config_hash") == want:
            return rec["_path"]
    return None
