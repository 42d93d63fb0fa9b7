"""Skip runs with a complete record in the launcher, before a worker or a SLURM task is spent on them."""
from __future__ import annotations

import logging
from typing import List, Sequence, Tuple

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict

from .summary import SKIPPED

log = logging.getLogger(__name__)


def run_hash(cfg: DictConfig) -> str:
    """The config hash launch.py gives this run: its resolved config without `hydra` and run-control keys."""
    from launch.records import config_hash
    from launch.resume import identity

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
    from launch.resume import complete_hashes

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
