"""launcher=local: runs in parallel worker processes, one per visible GPU or N on CPU.

Each worker is a process started with CUDA_VISIBLE_DEVICES naming exactly the GPU it was given
(submitit's local executor would show every run the same GPUs). A worker runs one job after
another, so torch and nfebench are imported once per worker, not once per run. A crash or
SIGKILL takes down only the run in hand (its record is written atomically, so it leaves
nothing) and a fresh worker takes the next run. Runs whose complete record is already in the
sweep dir are skipped here, without a worker. SIGTERM/SIGINT to the launcher are forwarded to
the workers, the summary is printed, and the launcher exits 128+signal; workers also die with
the launcher on SIGKILL (see worker.py).
"""

import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict

from common.errors import NfebenchError

from .resume import complete_hashes, run_hash, split_complete
from .summary import exit_if_failed, print_summary
from .worker import PARENT_ENV
from common.paths import REPO

log = logging.getLogger(__name__)
CPU = ""  # the slot of a CPU worker: CUDA_VISIBLE_DEVICES="" hides every GPU


def _no_gpu_driver() -> bool:
    # no NVIDIA or ROCm device nodes: no GPU, and no need to import torch (~2 s) to learn it
    return not any(Path("/dev").glob("nvidia[0-9]*")) and not Path("/dev/kfd").exists()


def visible_gpus() -> list[str]:
    """GPU ids as this process sees them (the entries of CUDA_VISIBLE_DEVICES when it is set)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" or _no_gpu_driver():
        return []
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
        raise NfebenchError(f"hydra.launcher.cpu_workers must be an integer >= 1; got {cpu_workers}")
    return [CPU] * cpu_workers


def worker_env(slot: str, n_slots: int, threads: Optional[int]) -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=slot, **{PARENT_ENV: str(os.getpid())})
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
    hash: str


class _Worker:
    """One worker process on one slot; it runs jobs one after another until it is closed or dies."""

    def __init__(self, slot: str, n_slots: int, threads: Optional[int]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "hydra_plugins.nfebench_launchers.worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=worker_env(slot, n_slots, threads), text=True, bufsize=1)

    def run(self, job: _Job, timeout_s: float) -> Optional[str]:
        """None when the job finished (its result file is written), else why the worker is gone."""
        try:
            self.proc.stdin.write(f"{job.payload}\t{job.result}\t{job.log}\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it died between jobs; the read below sees EOF
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if ready and self.proc.stdout.readline() == "done\n":
            return None
        if not ready:
            self.kill()
            return f"killed after the {timeout_s / 60:g} min timeout"
        code = self.proc.wait()
        if code < 0:
            return f"died from signal {-code}"
        return f"exited with status {code}" + (f": {_last_line(job.log)}" if _last_line(job.log) else "")

    def signal(self, signum: int) -> None:
        try:
            self.proc.send_signal(signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # EOF: the worker exits
        except OSError:
            pass
        self.proc.wait()


class NfebenchLocalLauncher(Launcher):
    def __init__(self, gpus=None, cpu_workers: int = 2, threads_per_worker=None, timeout_min: float = 1440,
                 log_dir: str = ".local") -> None:
        self.gpus = list(gpus) if gpus is not None else None
        self.cpu_workers, self.threads = int(cpu_workers), threads_per_worker
        self.timeout_s, self.log_dir = float(timeout_min) * 60, log_dir
        self.config = self.hydra_context = self.task_function = None
        self.workers: set = set()
        self.lock = threading.Lock()
        self.stopped: Optional[int] = None  # the signal that interrupted the sweep

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _sweep_config(self, idx: int, overrides: Sequence[str]) -> DictConfig:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = f"local_{idx}"
            cfg.hydra.job.num = idx
        return cfg

    def _prepare(self, idx: int, overrides: Sequence[str], cfg: DictConfig, folder: Path) -> _Job:
        import cloudpickle  # a dependency of submitit; pickles launch.py's task function by value

        job = _Job(idx, list(overrides), cfg, folder / f"{idx}_payload.pkl", folder / f"{idx}_result.pkl",
                   folder / f"{idx}_log.out", run_hash(cfg))
        job.result.unlink(missing_ok=True)
        job.payload.write_bytes(cloudpickle.dumps((self.hydra_context, self.task_function, cfg, Singleton.get_state())))
        return job

    def _serve(self, slot: str, n_slots: int, todo: "queue.Queue[_Job]", rets: dict) -> None:
        """One slot: take jobs until none are left, (re)starting a worker whenever the last one died."""
        worker = None
        try:
            while self.stopped is None:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                with self.lock:
                    if self.stopped is not None:
                        todo.put(job)
                        return
                    if worker is None:
                        worker = _Worker(slot, n_slots, self.threads)
                        self.workers.add(worker)
                why = worker.run(job, self.timeout_s)
                if why is not None:
                    with self.lock:
                        self.workers.discard(worker)
                    worker = None
                    if self.stopped is not None:
                        why = f"stopped by {signal.Signals(self.stopped).name} ({why})"
                rets[job.idx] = self._collect(job, why)
        finally:
            if worker is not None:
                with self.lock:
                    self.workers.discard(worker)
                worker.close()

    def _collect(self, job: _Job, why: Optional[str]) -> JobReturn:
        import cloudpickle

        if why is None and job.result.exists():
            ret = cloudpickle.loads(job.result.read_bytes())
            job.result.unlink()
            job.payload.unlink(missing_ok=True)
            return ret
        ret = JobReturn(overrides=job.overrides, cfg=job.config, hydra_cfg=job.config, status=JobStatus.FAILED)
        # killed after its record was written: the record is what counts, the run is done
        if complete_hashes(Path(str(self.config.hydra.sweep.dir))).get(job.hash):
            ret.status, ret.return_value = JobStatus.COMPLETED, "done"
            job.payload.unlink(missing_ok=True)
            return ret
        ret.return_value = RuntimeError(f"run #{job.idx} {why or 'left no result'}")
        return ret

    def _on_signal(self, signum, frame) -> None:
        with self.lock:
            self.stopped = signum
            workers = list(self.workers)
        for w in workers:
            w.signal(signum)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        folder = Path(str(self.log_dir))
        folder.mkdir(parents=True, exist_ok=True)
        slots = worker_slots(self.gpus, self.cpu_workers)
        kind = f"GPUs {','.join(slots)}" if slots[0] != CPU else f"{len(slots)} CPU workers"
        log.info(f"Launching {len(job_overrides)} jobs locally on {kind}; sweep dir {sweep_dir}, logs in {folder}")
        configs = []
        for i, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}")
            configs.append((initial_job_idx + i, overrides, self._sweep_config(initial_job_idx + i, overrides)))
        pending, rets = split_complete(sweep_dir, configs)
        jobs = [self._prepare(idx, overrides, cfg, folder) for idx, overrides, cfg in pending]
        todo: "queue.Queue[_Job]" = queue.Queue()
        for j in jobs:
            todo.put(j)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            threads = [threading.Thread(target=self._serve, args=(s, len(slots), todo, rets), daemon=True)
                       for s in slots[:len(jobs)]]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                time.sleep(0.05)  # the main thread stays free to take SIGTERM/SIGINT
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        stop = self.stopped
        for j in jobs:
            if j.idx not in rets:
                rets[j.idx] = self._collect(j, f"not started: the sweep was stopped by {signal.Signals(stop).name}"
                                            if stop else None)
        order = [initial_job_idx + i for i in range(len(job_overrides))]
        logs = {j.idx: str(j.log) for j in jobs}
        out = [rets[i] for i in order]
        print_summary(out, [logs.get(i) for i in order])
        if stop is not None:
            sys.exit(128 + stop)
        exit_if_failed(out)
        return out
