"""Merge the shards of a run into one record.

    python -m results.merge <sweep dir> [--out <dir>]

A shard is a run whose config differs from its siblings only in `sample_offset`/`num_samples`
(e.g. `-m num_samples=1000 sample_offset=0,1000,2000,3000`). Shards whose index ranges are
disjoint and contiguous are merged exactly through their metric_state.npz into one record with
the union range, the config (and config hash) of the equivalent single pass, and the shards
listed. Output: <out>/<config hash>/record.json (default out: <sweep dir>/merged), written
atomically after its metric_state.npz.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from launch.cli import report
from models.counter import merge_compute
from launch.records import RECORD_NAME, STATE_NAME, config_hash, load_record, read_records, setup_block
from common.files import atomic_write_bytes, atomic_write_json, npz_bytes
from common.errors import NfebenchError

SHARD_KEYS = ("sample_offset", "num_samples")


def shard_key(rec: dict) -> str:
    """Hash of everything but the index range: shards of one run share it."""
    return config_hash({k: v for k, v in rec["config"].items() if k not in SHARD_KEYS})


def group_shards(records: list[dict]) -> list[list[dict]]:
    groups: dict[str, list[dict]] = {}
    for rec in records:
        groups.setdefault(shard_key(rec), []).append(rec)
    return [sorted(g, key=lambda r: r["samples"]["index_range"][0]) for g in groups.values() if len(g) > 1]


def check_ranges(shards: list[dict]) -> tuple[int, int]:
    """The union [lo, hi) of the shards' ranges; overlaps and gaps are errors (they would double-count or hide samples)."""
    ranges = [tuple(r["samples"]["index_range"]) for r in shards]
    for (a0, a1), (b0, b1), rec in zip(ranges, ranges[1:], shards[1:]):
        if b0 < a1:
            raise NfebenchError(f"shards overlap: [{a0}, {a1}) and [{b0}, {b1}) ({rec['_path']})")
        if b0 > a1:
            raise NfebenchError(f"shards leave a gap: [{a1}, {b0}) is in no shard (next: {rec['_path']})")
    if len({r["nfe"]["counted"] for r in shards}) != 1:
        raise NfebenchError("shards counted different NFE: " + ", ".join(r["_path"] for r in shards))
    return ranges[0][0], ranges[-1][1]


def merged_suite(cfg: dict, shards: list[dict]):
    """A fresh metric suite of this config with every shard's state folded in."""
    from launch.run import load_model, metric_suite, plan, suite_needs_model

    # built exactly as launch.run builds a run's suite, so the states fold into the same object; the
    # grid comes from the plan, and a checkpoint loads only for a suite that asks the model
    suite = metric_suite(cfg, plan(cfg), load_model(cfg) if suite_needs_model(cfg) else None)
    for rec in shards:
        path = Path(rec["_path"]).parent / STATE_NAME
        if not path.exists():
            raise NfebenchError(f"shard has no {STATE_NAME}: {path.parent}")
        with np.load(path) as st:
            suite.merge_state({k: st[k] for k in st.files})
    return suite


def merged_nfe(parts: list[dict], num_samples: int) -> dict:
    """The shards' NFE block (the per-sample count is the same in all); run-level set-up (dlg's persistent chains)
    was paid by each shard, so it adds up."""
    out = dict(parts[0])
    if "setup" in out:
        rows, evals = (sum(p["setup"][k] for p in parts) for k in ("row_evals", "network_evals"))
        out["setup"] = setup_block(rows, evals, num_samples)
        out["amortized_per_sample"] = out["counted"] + out["setup"]["nfe_per_sample"]
    return out


def merge_group(shards: list[dict]) -> tuple[dict, dict]:
    """(merged record, merged metric state) for one group of shards."""
    lo, hi = check_ranges(shards)
    cfg = {**shards[0]["config"], "sample_offset": lo, "num_samples": hi - lo}
    suite = merged_suite(cfg, shards)
    first = shards[0]
    timing = {k: sum(r["timing"][k] for r in shards) for k in first["timing"]}
    protocol = {**first["metrics_protocol"], **suite.protocol()}
    if "index_range" in protocol:
        protocol["index_range"] = [lo, hi]
    record = {**{k: v for k, v in first.items() if k != "_path"},
              "created_at": datetime.now(timezone.utc).isoformat(),
              "config": cfg, "config_hash": config_hash(cfg),
              "metrics": suite.result(),
              "metrics_protocol": protocol,
              "samples": {**first["samples"], "num_samples": hi - lo, "index_range": [lo, hi]},
              "timing": {**timing, "summed_over_shards": True},
              **({"compute": merge_compute([r["compute"] for r in shards], hi - lo)}
                 if all("compute" in r for r in shards) else {}),
              "nfe": merged_nfe([r["nfe"] for r in shards], hi - lo),
              "shards": [{"path": r["_path"], "index_range": r["samples"]["index_range"],
                          "config_hash": r["config_hash"]} for r in shards]}
    return record, suite.state()


def merge_dir(root: Path, out: Path) -> list[Path]:
    out = out.resolve()
    # earlier merges (and anything under out) are results, not shards
    recs = [r for r in read_records(root) if "shards" not in r and out not in Path(r["_path"]).resolve().parents]
    if not recs:
        raise NfebenchError(f"no complete run records (record.json) under {root}")
    written = []
    for shards in group_shards(recs):
        try:
            record, state = merge_group(shards)
        except (KeyError, TypeError, IndexError) as err:  # a record with the top-level keys but not their contents
            raise NfebenchError(f"malformed record among {', '.join(r['_path'] for r in shards)}: "
                                f"{type(err).__name__} {err}") from None
        d = out / record["config_hash"]
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(d / STATE_NAME, npz_bytes(state))
        atomic_write_json(d / RECORD_NAME, record)  # last: a merged record exists only when whole
        written.append(d / RECORD_NAME)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m results.merge", description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="a directory holding the shards' record.json files")
    p.add_argument("--out", type=Path, default=None, help="where merged records go (default: <root>/merged)")
    p.error = lambda msg: sys.exit(report(NfebenchError(msg)))  # one line, not usage + error
    args = p.parse_args(argv)
    try:
        if not args.root.is_dir():
            raise NfebenchError(f"not a directory: {args.root}")
        written = merge_dir(args.root, args.out or args.root / "merged")
    except NfebenchError as err:
        return report(err)
    for path in written:
        rec = load_record(path)
        lo, hi = rec["samples"]["index_range"]
        print(f"merged {len(rec['shards'])} shards [{lo}, {hi}) -> {path}")
    if not written:
        print("no shards to merge (no runs that differ only in sample_offset/num_samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
