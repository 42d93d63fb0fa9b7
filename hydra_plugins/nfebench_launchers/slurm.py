"""launcher=slurm: one SLURM job array per sweep through submitit, waited on with deadlines.

Submission and the per-task body are hydra-submitit-launcher's (its `__call__` runs the job in
the allocation; its `checkpoint` resubmits the same run from scratch after a timeout or a
preemption, up to max_num_timeout timeouts). This class replaces only the waiting: every task
is waited for (one failure does not abandon the others), a task SLURM forgot about counts as
failed instead of being waited on for ever, and the sweep ends with a summary.
"""
from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

from .resume import split_complete
from .summary import exit_if_failed, print_summary

log = logging.getLogger(__name__)


def _failed(overrides: List[str], err: BaseException) -> JobReturn:
    ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
    ret.return_value = err
    return ret


def queued_ids(array_ids: set[str]) -> Optional[set[str]]:
    """Task ids (ARRAY_TASK form) SLURM still lists, or None when squeue cannot answer."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(sorted(array_ids)), "-o", "%i"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        # squeue fails on ids it has already purged; that is "none listed", not "no answer"
        return set() if "Invalid job id" in out.stderr else None
    return set(out.stdout.split())


class NfebenchSlurmLauncher(SlurmLauncher):
    def __init__(self, max_wait_min: Optional[float] = None, lost_after_s: float = 120.0, poll_s: float = 2.0,
                 **params: Any) -> None:
        super().__init__(**params)
        self.max_wait_s = None if max_wait_min is None else float(max_wait_min) * 60
        self.lost_after_s, self.poll_s = float(lost_after_s), float(poll_s)

    def _executor(self):
        import submitit

        p = dict(self.params)
        executor = submitit.AutoExecutor(folder=p.pop("submitit_folder"), cluster="slurm",
                                         slurm_max_num_timeout=p.pop("max_num_timeout"))
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in generic else f"slurm_{k}": v for k, v in p.items()})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        configs = []
        for i, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}")
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            configs.append((initial_job_idx + i, overrides, cfg))
        # a rerun queues only what is missing, not every run of the sweep to skip inside its allocation
        pending, rets = split_complete(sweep_dir, configs)
        log.info(f"Submitting {len(pending)} of {len(job_overrides)} runs as a SLURM job array "
                 f"({len(rets)} have complete records); sweep dir {sweep_dir}")
        logs = {}
        if pending:
            args = [(list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
                    for idx, overrides, _ in pending]
            jobs = self._executor().map_array(self, *zip(*args))
            log.info(f"SLURM job array {jobs[0].job_id.split('_')[0]}; logs in {jobs[0].paths.folder.parent}")
            for (idx, _, _), ret, job in zip(pending, self._wait(jobs, [a[0] for a in args]), jobs):
                rets[idx], logs[idx] = ret, str(job.paths.stderr)
        order = [initial_job_idx + i for i in range(len(job_overrides))]
        out = [rets[i] for i in order]
        print_summary(out, [logs.get(i) for i in order])
        exit_if_failed(out)
        return out

    def _wait(self, jobs, overrides) -> List[JobReturn]:
        rets: List[Optional[JobReturn]] = [None] * len(jobs)
        deadline = None if self.max_wait_s is None else time.monotonic() + self.max_wait_s
        unlisted_since: dict[int, float] = {}
        arrays = {j.job_id.split("_")[0] for j in jobs}
        while any(r is None for r in rets):
            open_ = [i for i, r in enumerate(rets) if r is None]
            listed = queued_ids(arrays)
            now = time.monotonic()
            for i in open_:
                job = jobs[i]
                if job.done():
                    rets[i] = self._result(job, overrides[i])
                    continue
                if listed is None or job.job_id in listed:
                    unlisted_since.pop(i, None)
                elif now - unlisted_since.setdefault(i, now) > self.lost_after_s:
                    if job.done(force_check=True):  # submitit's cached sacct state was just stale
                        rets[i] = self._result(job, overrides[i])
                        continue
                    # e.g. an array task cancelled while pending: accounting may never show it
                    rets[i] = _failed(overrides[i], RuntimeError(
                        f"SLURM task {job.job_id} left the queue without a result (state {job.state})"))
            if deadline is not None and now > deadline:
                for i in [i for i, r in enumerate(rets) if r is None]:
                    jobs[i].cancel(check=False)
                    rets[i] = _failed(overrides[i], TimeoutError(
                        f"SLURM task {jobs[i].job_id} cancelled: the sweep waited max_wait_min"))
            if any(r is None for r in rets):
                time.sleep(self.poll_s)
        return rets

    @staticmethod
    def _result(job, overrides) -> JobReturn:
        try:
            return job.results()[0]
        except Exception as err:  # submitit's UncompletedJobError/FailedJobError carry the log tail
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return _failed(overrides, RuntimeError(f"{first} (state {job.state})"))
