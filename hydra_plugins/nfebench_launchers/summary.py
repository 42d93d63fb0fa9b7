"""The last lines of a sweep: how many runs were done, skipped (complete record found) or failed."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus

from .resume import SKIPPED


def outcome(ret: JobReturn) -> str:
    if ret.status != JobStatus.COMPLETED:
        return "failed"
    return "skipped" if ret._return_value == SKIPPED else "done"


def _reason(ret: JobReturn) -> str:
    err = ret._return_value
    text = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else str(err)
    return text.strip().splitlines()[-1] if text.strip() else "failed"


def summary_lines(rets: Sequence[JobReturn], logs: Sequence[Optional[str]]) -> list[str]:
    kinds = [outcome(r) for r in rets]
    lines = [f"sweep summary: {len(rets)} runs: {kinds.count('done')} done, "
             f"{kinds.count('skipped')} skipped, {kinds.count('failed')} failed"]
    for ret, kind, log in zip(rets, kinds, logs):
        if kind == "failed":
            lines.append(f"  failed: {' '.join(ret.overrides or [])} ({_reason(ret)}); log: {log}")
    return lines


def print_summary(rets: Sequence[JobReturn], logs: Sequence[Optional[str]]) -> None:
    # stdout, after Hydra's own log lines; flushed so it precedes any error Hydra prints next
    print("\n".join(summary_lines(rets, logs)), file=sys.stdout, flush=True)


def exit_if_failed(rets: Sequence[JobReturn]) -> None:
    """Exit 1 after the summary when a run failed: the summary said why, and Hydra would otherwise
    re-raise the first failure with a traceback."""
    if any(r.status != JobStatus.COMPLETED for r in rets):
        sys.exit(1)
