"""Metric-vs-NFE tables from run records on disk.

    python -m results.collect <sweep dir> [--metric fd_pixel] [--out table.md]

Rows are solvers (with the options that change numbers), columns requested NFE; a cell with
runs whose counted NFE differs from the requested budget shows both.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from launch.records import atomic_write_bytes, read_records
from launch.cli import report
from sampling.errors import NfebenchError


KEYS = ("model", "solver", "schedule")


def solver_label(rec: dict) -> str:
    opts = rec["solver"]["options"]
    inner = ",".join(f"{k}={v}" for k, v in sorted(opts.items()))
    return f"{rec['solver']['name']}({inner})" if inner else rec["solver"]["name"]


def records_frame(root: Path) -> pd.DataFrame:
    recs = read_records(root)
    if not recs:
        raise NfebenchError(f"no complete run records (record.json) under {root}")
    rows = []
    for r in recs:
        row = {"model": r["model"]["name"], "solver": solver_label(r), "schedule": r["config"]["schedule"]["name"],
               "nfe": r["nfe"]["requested"], "nfe_counted": r["nfe"]["counted"],
               "num_samples": r["samples"]["num_samples"], "seed": r["samples"]["seed"], "path": r["_path"]}
        row.update(r["metrics"])
        rows.append(row)
    return pd.DataFrame(rows)


def pivot(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    if metric not in df.columns:
        metrics = [c for c in df.columns if c not in ("model", "solver", "schedule", "nfe", "nfe_counted",
                                                        "num_samples", "seed", "path")]
        raise NfebenchError(f"metric '{metric}' is in no record; available: {', '.join(metrics) or 'none'}")
    dup = df.duplicated(["model", "solver", "schedule", "nfe"], keep=False)
    if dup.any():
        raise NfebenchError("several records share model/solver/schedule/nfe: " + ", ".join(df.loc[dup, "path"]))
    return df.pivot(index=list(KEYS), columns="nfe", values=metric).sort_index()


def to_markdown(table: pd.DataFrame, metric: str) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(KEYS) + f" | {metric} @ NFE " + " | ".join(str(c) for c in cols) + " |",
             "|" + "---|" * len(KEYS) + "---:|" * len(cols)]
    for row, vals in table.iterrows():
        cells = ["" if pd.isna(v) else f"{v:.4g}" for v in vals]
        lines.append("| " + " | ".join(row) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m results.collect", description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="a sweep (or runs) directory holding record.json files")
    p.add_argument("--metric", default=None, help="metric to tabulate (default: the first one in the records)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    try:
        if not args.root.is_dir():
            raise NfebenchError(f"not a directory: {args.root}")
        df = records_frame(args.root)
        metric = args.metric or next(iter(read_records(args.root)[0]["metrics"]), None)
        if metric is None:
            raise NfebenchError("the records carry no metrics (metrics=none)")
        text = to_markdown(pivot(df, metric), metric)
    except NfebenchError as err:
        return report(err)
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
