"""Published FID/IS numbers (results/data/published_fid.csv), as data, with their protocols.

Copied verbatim from the shared reference; see published_fid.README.md beside it for the
caveats on comparing them (NFE conventions, FID implementations, sample counts).
How nfebench runs map onto its rows (checkpoints, solvers with options, metric names) is the data
table results/data/published_map.yaml.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd
import yaml

from common.errors import NfebenchError

DATA = Path(__file__).resolve().parent / "data"
PUBLISHED_CSV = DATA / "published_fid.csv"
MAP_YAML = DATA / "published_map.yaml"
COLUMNS = ["source", "table", "dataset", "checkpoint", "hf_repo", "solver", "schedule", "nfe", "metric", "value",
           "n_samples", "fid_impl", "notes"]


def load_published(path: Path = PUBLISHED_CSV) -> pd.DataFrame:
    df = pd.read_csv(path)
    if list(df.columns) != COLUMNS:
        raise ValueError(f"{path}: unexpected columns {list(df.columns)}")
    return df


def published_rows(source: str | None = None, table: str | None = None, checkpoint: str | None = None) -> pd.DataFrame:
    """The CSV rows with exactly this source, table and checkpoint (None: any).

    An experiment names the rows it reproduces this way; a name that matches no row is a one-line
    error listing the valid values, so a typo cannot silently reproduce nothing.
    """
    df = load_published()
    for col, want in (("source", source), ("table", table), ("checkpoint", checkpoint)):
        if want is None:
            continue
        hit = df[df[col] == want]
        if hit.empty:
            valid = sorted(df[col].dropna().unique())
            raise NfebenchError(f"no published row has {col} '{want}' (given the other keys); "
                                f"valid: {'; '.join(valid)}")
        df = hit
    return df.reset_index(drop=True)


@lru_cache(maxsize=1)
def load_map(path: Path = MAP_YAML) -> dict:
    return yaml.safe_load(Path(path).read_text())


def checkpoint_of(model_name: str) -> dict | None:
    """The CSV's dataset/checkpoint names (and reference set) for an nfebench model config, or None."""
    return (load_map().get("checkpoints") or {}).get(model_name)


def metric_key(csv_metric: str) -> str | None:
    return (load_map().get("metrics") or {}).get(csv_metric)


def nfebench_solver(solver: str, schedule, source: str | None = None, nfe: int | None = None) -> dict | None:
    """The map entry that runs the CSV's (solver, schedule), or None.

    Its `overrides` (Hydra overrides) run the row with the paper's set-up; `nfe_convention` says how the
    paper counted cost when that differs from nfebench's counter. `nfe` (optional list) restricts an
    entry to those budgets, for papers whose options for one label change with the budget.
    """
    schedule = None if pd.isna(schedule) else schedule
    for entry in load_map().get("solvers") or ():
        if entry["solver"] != solver or entry.get("schedule") != schedule:
            continue
        if entry.get("source") and not str(source or "").startswith(entry["source"]):
            continue
        if entry.get("nfe") is not None and nfe is not None and int(nfe) not in entry["nfe"]:
            continue  # the paper ran this label with other options at this budget (another entry)
        return entry
    return None
