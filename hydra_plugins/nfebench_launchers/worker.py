"""A launcher=local worker: python -m hydra_plugins.nfebench_launchers.worker

Runs one job after another in one process, so torch and nfebench are imported once per worker,
not once per run. Protocol: the launcher writes "PAYLOAD RESULT LOG" lines on stdin; for each,
the worker sends the run's output to LOG, writes the pickled JobReturn to RESULT (atomically)
and answers "done" on its original stdout. The worker never outlives the launcher: stdin
reaching EOF (the launcher exited or was SIGKILLed, which closes the pipe) ends it at once, and
on Linux the kernel also sends it SIGKILL when the launcher dies (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import ctypes
import os
import queue
import signal
import sys
import threading
from pathlib import Path

PARENT_ENV = "NFEBENCH_LAUNCHER_PID"


def die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the stdin watch below still ends the worker
    if os.environ.get(PARENT_ENV) and os.getppid() != int(os.environ[PARENT_ENV]):
        os._exit(1)  # the launcher died before prctl took effect


def watch_stdin(jobs: "queue.Queue[str]") -> None:
    """Read job lines; EOF means the launcher is gone (or done with us): leave now, mid-run or not."""
    for line in sys.stdin:
        jobs.put(line)
    os._exit(0)


def _picklable(ret):
    import cloudpickle

    try:
        return cloudpickle.dumps(ret)
    except Exception:  # an exception object that does not pickle: keep its text
        ret.return_value = RuntimeError(repr(ret._return_value))
        return cloudpickle.dumps(ret)


def _to_log(path: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_one(payload: str, result: str) -> None:
    import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    from common.files import atomic_write_bytes

    # first log line: the device this run was given (what torch in this process will see)
    print(f"nfebench worker pid {os.getpid()}: CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}",
          flush=True)
    context, task, config, state = cloudpickle.loads(Path(payload).read_bytes())
    Singleton.set_state(state)
    setup_globals()
    ret = run_job(hydra_context=context, task_function=task, config=config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    atomic_write_bytes(Path(result), _picklable(ret))  # the launcher only ever sees a whole result


def main() -> None:
    die_with_parent()
    reply = os.fdopen(os.dup(1), "w", buffering=1)  # to the launcher; fd 1 becomes each run's log
    jobs: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=watch_stdin, args=(jobs,), daemon=True).start()
    import launch.run  # noqa: F401  (torch and every solver, once, while the launcher prepares payloads)

    while True:
        payload, result, log = jobs.get().rstrip("\n").split("\t")
        _to_log(log)
        run_one(payload, result)
        sys.stdout.flush()
        sys.stderr.flush()
        reply.write("done\n")


if __name__ == "__main__":
    main()
