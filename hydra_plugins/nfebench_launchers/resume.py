"""Skip-complete: a run is identified by the hash of its resolved config, never by its directory.

A record exists only once a run finished (records are written atomically, last), so a failed,
cancelled or killed run leaves nothing to find here and simply runs again. A record that is
there but unreadable (truncated by a full disk, edited by hand) is moved aside with one warning
and its run is redone: one bad file never blocks the rest of a sweep.

launch.py's task function skips a run whose record exists (``find_complete``); the local and
slurm launchers skip it earlier, before a worker or a SLURM task is spent on it (``split_complete``).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict

from launch.records import config_hash, move_aside, read_records

log = logging.getLogger(__name__)

# Keys that say how or where to run, not what to compute: they must not change a run's identity.
NON_IDENTITY_KEYS = ("skip_complete", "wandb", "dry_run")
SKIPPED = "skipped"  # the task's return value for a skipped run; the sweep summary counts it


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


def run_hash(cfg: DictConfig) -> str:
    """The config hash launch.py gives this run: its resolved config without `hydra` and run-control keys."""
    task = cfg.copy()
    with open_dict(task):
        task.pop("hydra", None)
    return config_hash(identity(OmegaConf.to_container(task, resolve=True)))


def skipped_return(overrides: Sequence[str], cfg: DictConfig) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), cfg=cfg, hydra_cfg=cfg, status=JobStatus.COMPLETED)
    ret.return_value = SKIPPED
    return ret


def split_complete(sweep_dir, jobs: Sequence[Tuple[int, Sequence[str], DictConfig]]
                   ) -> Tuple[list, dict]:
    """(jobs still to run, {job index: JobReturn} of those whose complete record is in sweep_dir).

    jobs: (index, overrides, sweep config). A run with skip_complete=false always runs.
    """
    done = complete_hashes(sweep_dir)  # one pass over the sweep dir; corrupt records are set aside here
    todo: List = []
    skipped = {}
    for idx, overrides, cfg in jobs:
        path = done.get(run_hash(cfg)) if cfg.get("skip_complete") else None
        if path:
            log.info(f"\t#{idx} skipped: complete record {path}")
            skipped[idx] = skipped_return(overrides, cfg)
        else:
            todo.append((idx, overrides, cfg))
    return todo, skipped
