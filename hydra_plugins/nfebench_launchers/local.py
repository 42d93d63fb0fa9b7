"""launcher=local: runs in parallel subprocesses, one per visible GPU or N on CPU.

Each run is its own process, started with CUDA_VISIBLE_DEVICES naming exactly the GPU it was
given (submitit's local executor would show every run the same GPUs), so a crash or SIGKILL
takes down only that run; its record is written atomically, so a killed run leaves nothing.
"""

import logging
import os
import queue
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict

from .summary import print_summary

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
CPU = ""  # the slot of a CPU worker: CUDA_VISIBLE_DEVICES="" hides every GPU


def visible_gpus() -> list[str]:
    """GPU ids as this process sees them (the entries of CUDA_VISIBLE_DEVICES when it is set)."""
    import torch  # only the launcher process pays for it, once

    n = torch.cuda.device_count()
    listed = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:n] if listed else [str(i) for i in range(n)]


def worker_slots(gpus: Optional[Sequence[Any]], cpu_workers: int) -> list[str]:
    """One slot per worker: a GPU id, or CPU."""
    ids = visible_gpus() if gpus is None else [str(g) for g in gpus]
    if ids:
        return ids
    if cpu_workers < 1:
        raise ValueError(f"hydra.launcher.cpu_workers must be >= 1; got {cpu_workers}")
    return [CPU] * cpu_workers


def worker_env(slot: str, n_slots: int, threads: Optional[int]) -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=slot)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if slot == CPU and "OMP_NUM_THREADS" not in os.environ:
        # N workers each using every core would only fight over them
        env["OMP_NUM_THREADS"] = str(threads or max(1, (os.cpu_count() or 1) // n_slots))
    return env


def _last_line(path: Path) -> str:
    """The run's last log line (e.g. its `nfebench: error: ...`), for the summary."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


@dataclass
class _Job:
    idx: int
    overrides: List[str]
    config: DictConfig
    payload: Path
    result: Path
    log: Path


class NfebenchLocalLauncher(Launcher):
    def __init__(self, gpus=None, cpu_workers: int = 2, threads_per_worker=None, timeout_min: float = 1440,
                 log_dir: str = ".local") -> None:
        self.gpus = list(gpus) if gpus is not None else None
        self.cpu_workers, self.threads = int(cpu_workers), threads_per_worker
        self.timeout_s, self.log_dir = float(timeout_min) * 60, log_dir
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _prepare(self, idx: int, overrides: Sequence[str], folder: Path) -> _Job:
        import cloudpickle  # a dependency of submitit; pickles launch.py's task function by value

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = f"local_{idx}"
            cfg.hydra.job.num = idx
        job = _Job(idx, list(overrides), cfg, folder / f"{idx}_payload.pkl", folder / f"{idx}_result.pkl",
                   folder / f"{idx}_log.out")
        job.result.unlink(missing_ok=True)
        job.payload.write_bytes(cloudpickle.dumps((self.hydra_context, self.task_function, cfg, Singleton.get_state())))
        return job

    def _run(self, job: _Job, slots: "queue.Queue[str]", n_slots: int) -> JobReturn:
        slot = slots.get()
        try:
            with open(job.log, "ab") as out:
                proc = subprocess.run([sys.executable, "-m", "hydra_plugins.nfebench_launchers.worker",
                                       str(job.payload), str(job.result)], stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=worker_env(slot, n_slots, self.threads),
                                      timeout=self.timeout_s)
            code, why = proc.returncode, None
        except subprocess.TimeoutExpired:  # subprocess.run has already killed it
            code, why = None, f"killed after the {self.timeout_s / 60:g} min timeout"
        finally:
            slots.put(slot)
        return self._collect(job, code, why)

    def _collect(self, job: _Job, code: Optional[int], why: Optional[str]) -> JobReturn:
        import cloudpickle

        if code == 0 and job.result.exists():
            ret = cloudpickle.loads(job.result.read_bytes())
            job.result.unlink()
            job.payload.unlink(missing_ok=True)
            return ret
        if why is None and code is not None and code < 0:
            why = f"died from signal {-code}"
        elif why is None:
            why = f"exited with status {code}" + (f": {_last_line(job.log)}" if _last_line(job.log) else "")
        ret = JobReturn(overrides=job.overrides, cfg=job.config, hydra_cfg=job.config, status=JobStatus.FAILED)
        ret.return_value = RuntimeError(f"run #{job.idx} {why}")
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        folder = Path(str(self.log_dir))
        folder.mkdir(parents=True, exist_ok=True)
        slots = worker_slots(self.gpus, self.cpu_workers)
        kind = f"GPUs {','.join(slots)}" if slots[0] != CPU else f"{len(slots)} CPU workers"
        log.info(f"Launching {len(job_overrides)} jobs locally on {kind}; sweep dir {sweep_dir}, logs in {folder}")
        jobs = []
        for i, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}")
            jobs.append(self._prepare(initial_job_idx + i, overrides, folder))
        free: "queue.Queue[str]" = queue.Queue()
        for s in slots:
            free.put(s)
        with ThreadPoolExecutor(max_workers=len(slots)) as pool:
            rets = list(pool.map(lambda j: self._run(j, free, len(slots)), jobs))
        print_summary(rets, [str(j.log) for j in jobs])
        return rets
