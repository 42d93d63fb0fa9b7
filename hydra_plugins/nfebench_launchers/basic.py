"""Hydra's in-process, one-after-another launcher plus the sweep summary."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn

from .summary import exit_if_failed, print_summary


def _job_log(ret: JobReturn) -> str | None:
    # Hydra's job logging writes <output dir>/<job name>.log
    try:
        return str(Path(ret.hydra_cfg.hydra.runtime.output_dir) / f"{ret.hydra_cfg.hydra.job.name}.log")
    except AttributeError:
        return None


class NfebenchBasicLauncher(BasicLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        rets = super().launch(job_overrides, initial_job_idx)
        print_summary(rets, [_job_log(r) for r in rets])
        exit_if_failed(rets)
        return rets
