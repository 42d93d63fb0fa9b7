"""One run of launcher=local, in its own process: python -m hydra_plugins.nfebench_launchers.worker PAYLOAD RESULT"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from launch.records import atomic_write_bytes


def _picklable(ret):
    import cloudpickle

    try:
        return cloudpickle.dumps(ret)
    except Exception:  # an exception object that does not pickle: keep its text
        ret.return_value = RuntimeError(repr(ret._return_value))
        return cloudpickle.dumps(ret)


def main(payload: str, result: str) -> None:
    import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    # first log line: the device this run was given (what torch in this process will see)
    print(f"nfebench worker pid {os.getpid()}: CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}",
          flush=True)
    context, task, config, state = cloudpickle.loads(Path(payload).read_bytes())
    Singleton.set_state(state)
    setup_globals()
    ret = run_job(hydra_context=context, task_function=task, config=config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    atomic_write_bytes(Path(result), _picklable(ret))  # the launcher only ever sees a whole result


if __name__ == "__main__":
    main(*sys.argv[1:3])
