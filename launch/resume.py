"""Skip-complete: a run is identified by the hash of its resolved config, never by its directory.

A record exists only once a run finished (records are written atomically, last), so a failed,
cancelled or killed run leaves nothing to find here and simply runs again. A record that is
there but unreadable (truncated by a full disk, edited by hand) is moved aside with one warning
and its run is redone: one bad file never blocks the rest of a sweep.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .records import config_hash, move_aside, read_records

# Keys that say how or where to run, not what to compute: they must not change a run's identity.
NON_IDENTITY_KEYS = ("skip_complete", "wandb", "dry_run")
SKIPPED = "skipped"  # the task's return value for a skipped run; the launchers' summary counts it


def identity(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in NON_IDENTITY_KEYS}


def _set_aside(path: Path, err: Exception) -> None:
    dest = move_aside(path)
    if dest is not None:  # another process may have moved it first: it warned then
        print(f"nfebench: warning: {err}; moved to {dest.name}, its run will be redone", file=sys.stderr, flush=True)


def complete_hashes(sweep_dir) -> dict[str, str]:
    """{config hash: record path} of every complete record under sweep_dir (corrupt ones set aside)."""
    root = Path(sweep_dir)
    if not root.is_dir():
        return {}
    return {rec["config_hash"]: rec["_path"] for rec in read_records(root, on_bad=_set_aside)}


def find_complete(cfg: dict, sweep_dir) -> str | None:
    """Path of a complete record under sweep_dir with this config's hash, or None."""
    return complete_hashes(sweep_dir).get(config_hash(identity(cfg)))
