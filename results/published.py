"""Published FID/IS numbers (results/data/published_fid.csv), as data, with their protocols.

Copied verbatim from the shared reference; see published_fid.README.md beside it for the
caveats on comparing them (NFE conventions, FID implementations, sample counts).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

PUBLISHED_CSV = Path(__file__).resolve().parent / "data" / "published_fid.csv"
COLUMNS = ["source", "table", "dataset", "checkpoint", "hf_repo", "solver", "schedule", "nfe", "metric", "value",
           "n_samples", "fid_impl", "notes"]


def load_published(path: Path = PUBLISHED_CSV) -> pd.DataFrame:
    df = pd.read_csv(path)
    if list(df.columns) != COLUMNS:
        raise ValueError(f"{path}: unexpected columns {list(df.columns)}")
    return df
