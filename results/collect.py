"""Paper tables from run records: metrics side by side, solvers as rows, NFE as columns.

    python -m results.collect <dir> [--metric fid,is] [--compare published] [--format md|csv|tex]
                              [--plot FILE.png|FILE.svg] [--x nfe|macs] [--strict] [--out FILE]

One table per model (and metric protocol); rows are solvers labelled with the options that differ
from their defaults; columns are requested NFE, and a cell whose counted NFE differs shows both.
Merged shards replace their shards, repeated seeds collapse into mean ± std. `--compare published`
puts results/data/published_fid.csv beside each cell (ours / published (difference)), marks protocol
differences with footnotes and lists the published rows no run answers. `--x macs` measures cost in
multiply-accumulates per sample (the record's compute.macs_per_sample) instead of NFE: the plot's x axis,
and each table cell says what it cost ("@ 5.05M"); the CSV always carries macs_per_sample.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from launch.cli import report
from launch.records import RECORD_NAME, load_record
from common.files import atomic_write_bytes
from common.errors import NfebenchError
from common.registry import check_choice

from . import published as pub
from .settings import flatten, fmt, label, run_settings, setup_part, solver_part

FORMATS = ("md", "csv", "tex")
X_AXES = ("nfe", "macs")
PLOT_SUFFIXES = (".png", ".svg")
METRIC_ALIASES = {"is": "inception_score", "IS": "inception_score", "FID": "fid"}
DISPLAY = {"fid": "FID", "inception_score": "IS", "kid_mean": "KID", "precision": "Prec.", "recall": "Rec."}
# Decimals as the papers print them (FID/IS: 2, as in DDIM, DEIS, DPM-Solver); others 4 significant digits.
DECIMALS = {"fid": 2, "inception_score": 2, "kid_mean": 4, "kid_std": 4, "precision": 3, "recall": 3, "f_score": 3}
# Fields of metrics_protocol that say how or where a run was done, not what was measured.
VOLATILE = {"seed", "index_range", "feature_extraction_s", "save_samples", "denoise_to_zero", "versions",
            "dataset_root", "cache", "cache_file", "file"}
# Extractors that are ports of the 2015-12-05 TF Inception the papers use (by name or weights file).
STANDARD_EXTRACTORS = ("inception-v3-compat", "inception-2015-12-05")
NEEDED = ("config.model", "config.solver", "config.schedule", "nfe.requested", "nfe.counted", "samples.seed",
          "samples.index_range", "solver.name", "metrics_protocol")


# ---- reading ------------------------------------------------------------------------------------

def warn(msg: str) -> None:
    print(f"nfebench: warning: {msg}", file=sys.stderr)


def _check_nested(rec: dict, path: Path) -> None:
    for dotted in NEEDED:
        node = rec
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise NfebenchError(f"incomplete record {path}: missing {dotted}")
            node = node[part]


def scan(root: Path, strict: bool = False) -> list[dict]:
    """Complete records under root; a damaged one is skipped with a warning (an error when strict).

    A merged record replaces the shards it lists, and one run found twice (same config hash) counts once.
    """
    recs, seen = [], set()
    for path in sorted(Path(root).rglob(RECORD_NAME)):
        try:
            rec = load_record(path)
            _check_nested(rec, path)
        except NfebenchError as err:
            if strict:
                raise
            warn(f"{err}; skipped (--strict makes this an error)")
            continue
        if rec["status"] == "complete":
            rec["_path"] = str(path)
            recs.append(rec)
    merged = {s["config_hash"] for r in recs for s in r.get("shards", ())}
    out = []
    for r in sorted(recs, key=lambda r: "shards" not in r):  # merged records first: they win a hash tie
        if r["config_hash"] in seen or ("shards" not in r and r["config_hash"] in merged):
            continue
        seen.add(r["config_hash"])
        out.append(r)
    if not out:
        raise NfebenchError(f"no complete run records ({RECORD_NAME}) under {root}")
    return out


def protocol_key(protocol: dict) -> str:
    flat = flatten(protocol)
    keep = {k: v for k, v in flat.items() if not VOLATILE & set(k.split("."))}
    return json.dumps(keep, sort_keys=True, default=str)


def protocol_text(protocol: dict) -> str:
    suite = protocol.get("suite", "?")
    parts = [f"metrics={suite}"]
    impl = protocol.get("implementation") or {}
    if impl:
        parts.append(f"{impl.get('name')} {impl.get('version') or ''}".strip())
    if protocol.get("extractor"):
        parts.append(f"extractor {protocol['extractor'].get('name')}")
    if protocol.get("reference"):
        parts.append(f"reference {protocol['reference'].get('id')}")
    if protocol.get("num_samples") is not None:
        parts.append(f"{protocol['num_samples']} samples")
    return ", ".join(parts)


# ---- tables -------------------------------------------------------------------------------------

@dataclass
class Cell:
    requested: int
    counted: set = field(default_factory=set)
    macs: set = field(default_factory=set)         # MACs per sample (records without a compute part: none)
    by_seed: dict = field(default_factory=dict)   # seed -> record
    published: dict = field(default_factory=dict)  # metric -> (csv row, [mark texts])

    @property
    def macs_per_sample(self) -> float | None:
        return max(self.macs) if self.macs else None

    def values(self, metric: str) -> list[float]:
        return [r["metrics"][metric] for _, r in sorted(self.by_seed.items()) if metric in r["metrics"]]


@dataclass
class Row:
    solver: str
    settings: dict
    cells: dict = field(default_factory=dict)      # requested nfe -> Cell
    points: dict = field(default_factory=dict)     # metric -> [(published nfe, value)] for the plot


@dataclass
class Table:
    model: str
    model_diff: dict
    protocol: dict
    rows: dict = field(default_factory=dict)       # label -> Row
    metrics: list = field(default_factory=list)
    unmatched: list = field(default_factory=list)  # published rows no cell answers
    tried: list = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{label(self.model, self.model_diff)} — {protocol_text(self.protocol)}"

    @property
    def nfes(self) -> list[int]:
        return sorted({n for r in self.rows.values() for n in r.cells})


def build_tables(recs: list[dict]) -> list[Table]:
    tables: dict[tuple, Table] = {}
    where: dict[tuple, tuple] = {}  # (model, row, nfe) -> (protocol key, a path): one protocol per cell
    for rec in recs:
        cfg, path = rec["config"], rec["_path"]
        model = cfg["model"].get("name")
        diff, mdiff = run_settings(cfg)
        row_label = label(rec["solver"]["name"], diff)
        proto = rec["metrics_protocol"]
        pkey = protocol_key(proto)
        nfe = rec["nfe"]["requested"]
        cell_id = (label(model, mdiff), row_label, nfe)
        if cell_id in where and where[cell_id][0] != pkey:
            other = where[cell_id][1]
            raise NfebenchError(f"incompatible metric protocols in one cell ({cell_id[0]}, {row_label}, nfe={nfe}): "
                                f"{path} vs {other} differ in {_protocol_diff(pkey, where[cell_id][0])}")
        where.setdefault(cell_id, (pkey, path))
        table = tables.setdefault((cell_id[0], pkey), Table(model, mdiff, proto))
        row = table.rows.setdefault(row_label, Row(rec["solver"]["name"], diff))
        cell = row.cells.setdefault(nfe, Cell(nfe))
        seed = rec["samples"]["seed"]
        if seed in cell.by_seed:
            prev = cell.by_seed[seed]
            if prev["samples"]["index_range"] != rec["samples"]["index_range"]:
                raise NfebenchError(f"unmerged shards in one cell ({row_label}, nfe={nfe}): {prev['_path']} and {path}; "
                                    f"run `python -m results.merge <sweep dir>` and collect <sweep dir>/merged")
            hidden = _config_diff(prev["config"], rec["config"])
            if hidden:  # something changes the numbers that the row label does not show: refuse, never mix
                raise NfebenchError(f"two runs in one cell ({row_label}, nfe={nfe}, seed={seed}) differ in "
                                    f"{', '.join(hidden)}: {prev['_path']} and {path}")
            continue  # the same samples run twice (another batch size or device): one measurement
        cell.by_seed[seed] = rec
        cell.counted.add(rec["nfe"]["counted"])
        if "compute" in rec:
            cell.macs.add(rec["compute"]["macs_per_sample"])
        for m in rec["metrics"]:
            if m not in table.metrics:
                table.metrics.append(m)
    for t in tables.values():  # the solver's default first, then its variants: stable across sweeps
        t.rows = dict(sorted(t.rows.items(), key=lambda kv: (kv[1].solver, len(kv[1].settings), kv[0])))
    return sorted(tables.values(), key=lambda t: t.title)


# Config keys that change how a run is done, never its numbers.
# (metrics: compared through the metric protocol instead, which leaves out caches and batch sizes.)
HARMLESS = {"batch_size", "device", "grid_images", "save_samples", "skip_complete", "wandb", "launcher", "hydra",
            "metrics"}


def _config_diff(a: dict, b: dict) -> list[str]:
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb)
                  if k.split(".")[0] not in HARMLESS and fa.get(k, "<missing>") != fb.get(k, "<missing>"))


def _protocol_diff(a: str, b: str) -> str:
    da, db = json.loads(a), json.loads(b)
    keys = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
    return ", ".join(f"{k} ({da.get(k)} vs {db.get(k)})" for k in keys[:3]) + (" ..." if len(keys) > 3 else "")


def pick_metrics(tables: list[Table], wanted: str | None) -> list[str]:
    have = [m for t in tables for m in t.metrics]
    have = list(dict.fromkeys(have))
    if not have:
        raise NfebenchError("the records carry no metrics (metrics=none)")
    if not wanted:
        return have
    out = [METRIC_ALIASES.get(m.strip(), m.strip()) for m in wanted.split(",") if m.strip()]
    for m in out:
        if m not in have:
            raise NfebenchError(f"metric '{m}' is in no record; available: {', '.join(have)}")
    return out


# ---- published numbers --------------------------------------------------------------------------

def _mapped(entry: dict, model: str):
    from .settings import compose

    overrides = entry["overrides"]
    cfg = compose(("model=" + model, *overrides)) or compose(tuple(overrides))
    if cfg is None:
        raise NfebenchError(f"{pub.MAP_YAML}: overrides {entry['overrides']} do not compose in this checkout")
    return cfg["solver"]["name"], run_settings(cfg)[0]


def compare_published(tables: list[Table], metrics: list[str]) -> None:
    """Attach published rows to cells (with protocol marks); collect the unmatched ones. Raises when none match."""
    csv = pub.load_published()
    matched = 0
    for t in tables:
        ck = pub.checkpoint_of(t.model)
        if ck is None:
            t.tried.append(f"model '{t.model}' has no checkpoint in {pub.MAP_YAML.name}")
            continue
        for lbl, row in t.rows.items():
            t.tried.append(f"({ck['dataset']}, {ck['checkpoint'][0]}, {lbl}, NFE {','.join(map(str, sorted(row.cells)))})")
        cands = csv[(csv["dataset"] == ck["dataset"]) & csv["checkpoint"].isin(ck["checkpoint"])]
        for _, p in cands.iterrows():
            metric = pub.metric_key(p["metric"])
            if metric not in metrics:
                continue
            entry = pub.nfebench_solver(p["solver"], p["schedule"], p["source"], p["nfe"])
            mapped = _mapped(entry, t.model) if entry else None
            hit = None
            if mapped:
                rows = [r for r in t.rows.values() if r.solver == mapped[0] and solver_part(r.settings) == solver_part(mapped[1])]
                rows.sort(key=lambda r: setup_part(r.settings) != setup_part(mapped[1]))  # same set-up first
                same = [r for r in rows if setup_part(r.settings) == setup_part(mapped[1])]
                for r in same or rows:  # the plot draws a published point beside the runs closest to it
                    r.points.setdefault(metric, []).append((int(p["nfe"]), float(p["value"])))
                for r in rows:
                    cell = r.cells.get(int(p["nfe"]))
                    if cell and metric not in cell.published and metric in t.metrics:
                        hit = (r, cell)
                        break
            if hit:
                r, cell = hit
                cell.published[metric] = (p, _marks(p, entry, mapped[1], r, cell, t, ck, metric))
                matched += 1
            else:
                t.unmatched.append((p, label(*mapped) if mapped else "no nfebench mapping"))
    if not matched:
        tried = "; ".join(x for t in tables for x in t.tried)
        raise NfebenchError(f"--compare published: no row of {pub.PUBLISHED_CSV.name} matches these records "
                            f"(metrics {', '.join(metrics)}); tried (dataset, checkpoint, solver, NFE): {tried}")


def _marks(p, entry, mapped_settings, row, cell, t, ck, metric) -> list[str]:
    marks, proto = [], t.protocol
    if metric in ("fid", "inception_score"):
        impl = proto.get("implementation") or {}
        published_impl = p["fid_impl"] if isinstance(p["fid_impl"], str) else "not stated"
        marks.append(f"FID implementation: published {published_impl}; ours {impl.get('name', proto.get('suite'))} "
                     f"{impl.get('version') or ''}".rstrip())
        ext = proto.get("extractor") or {}
        if not any(s in f"{ext.get('name')} {ext.get('file')}" for s in STANDARD_EXTRACTORS):
            marks.append(f"extractor weights: ours {ext.get('name')} (sha256 {str(ext.get('sha256'))[:12]}), "
                         f"not the 2015-12-05 Inception")
        ref = (proto.get("reference") or {}).get("id")
        if ck.get("reference") is None:
            marks.append(f"reference statistics: published not stated; ours {ref}")
        elif ck["reference"] not in str(ref):
            marks.append(f"reference statistics: published {ck['reference']}; ours {ref}")
    ours_n = proto.get("num_samples")
    if not pd.isna(p["n_samples"]) and int(p["n_samples"]) != ours_n:
        marks.append(f"sample count: published {int(p['n_samples'])}; ours {ours_n}")
    counted = max(cell.counted)
    if entry.get("nfe_convention"):
        marks.append(f"NFE convention: {entry['nfe_convention']}")
    elif counted != int(p["nfe"]):
        marks.append(f"NFE convention: published {int(p['nfe'])}; ours counted {counted}")
    ours_setup, theirs = setup_part(row.settings), setup_part(mapped_settings)
    if ours_setup != theirs:
        show = lambda d: ", ".join(f"{k}={fmt(v)}" for k, v in d.items()) or "solver defaults"  # noqa: E731
        marks.append(f"sampling set-up: published {show(theirs)}; ours {show(ours_setup)}")
    if t.model_diff:
        marks.append(f"checkpoint: ours {', '.join(f'{k}={fmt(v)}' for k, v in t.model_diff.items())}; "
                     f"published {ck.get('hf_repo') or p['checkpoint']}")
    return marks


# ---- rendering ----------------------------------------------------------------------------------

def rnd(metric: str, x: float) -> float:
    if x is None or not math.isfinite(x):
        return x
    d = DECIMALS.get(metric)
    return round(x, d) if d is not None else float(f"{x:.4g}")


def num(metric: str, x: float) -> str:
    d = DECIMALS.get(metric)
    return f"{x:.{d}f}" if d is not None else f"{x:.4g}"


def stats(values: list[float]) -> tuple[float, float | None]:
    s = pd.Series(values, dtype=float)
    return float(s.mean()), (float(s.std(ddof=1)) if len(s) > 1 else None)


def macs_text(v: float | None) -> str:
    """Multiply-accumulates as 4 significant digits with a k/M/G/T suffix."""
    if v is None:
        return "?"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.4g}{suffix}"
    return f"{v:.4g}"


def cell_text(cell: Cell, metric: str, tex: bool, letters: dict, x: str = "nfe") -> str:
    vals = cell.values(metric)
    if not vals:
        return ""
    mean, std = stats(vals)
    pm, minus = (r" $\pm$ ", "$-$") if tex else (" ± ", "−")
    text = num(metric, mean) + (pm + num(metric, std) if std is not None else "")
    counted = max(cell.counted)
    if counted != cell.requested:
        text += f" (counted {counted})"
    if x == "macs":
        text += f" @ {macs_text(cell.macs_per_sample)}"
    if metric in cell.published:
        p, marks = cell.published[metric]
        diff = mean - float(p["value"])
        sign = "+" if diff >= 0 else minus
        text += f" / {num(metric, float(p['value']))} ({sign}{num(metric, abs(diff))})"
        keys = ",".join(letters.setdefault(m, chr(ord("a") + len(letters))) for m in marks)
        if keys:
            text += rf"\textsuperscript{{{keys}}}" if tex else f" [{keys}]"
    return text


def display_frame(t: Table, metrics: list[str], tex: bool, letters: dict, x: str = "nfe") -> pd.DataFrame:
    ms = [m for m in metrics if m in t.metrics]
    name = lambda m: tex_escape(DISPLAY.get(m, m)) if tex else DISPLAY.get(m, m)  # noqa: E731
    cols = pd.MultiIndex.from_tuples([(name(m), n) for m in ms for n in t.nfes], names=["metric", "NFE"])
    data = [[cell_text(r.cells[n], m, tex, letters, x) if n in r.cells else "" for m in ms for n in t.nfes]
            for r in t.rows.values()]
    index = pd.Index([tex_escape(k) if tex else k for k in t.rows], name="solver")
    return pd.DataFrame(data, index=index, columns=cols)


def unmatched_frame(t: Table) -> pd.DataFrame:
    rows = [{"solver (published)": p["solver"], "schedule": "" if pd.isna(p["schedule"]) else p["schedule"], "NFE": int(p["nfe"]), "metric": p["metric"],
             "value": p["value"],
             "samples": "" if pd.isna(p["n_samples"]) else int(p["n_samples"]), "source": f"{p['source']} {p['table']}", "nfebench": lbl}
            for p, lbl in t.unmatched]
    return pd.DataFrame(rows)


def tidy_frame(tables: list[Table], metrics: list[str]) -> pd.DataFrame:
    """One row per (table, solver, metric, NFE): the CSV output, numbers rounded as the tables print them."""
    rows = []
    for t in tables:
        base = {"model": label(t.model, t.model_diff), "protocol": protocol_text(t.protocol)}
        for lbl, r in t.rows.items():
            for m in (m for m in metrics if m in t.metrics):
                for n, cell in sorted(r.cells.items()):
                    vals = cell.values(m)
                    if not vals:
                        continue
                    mean, std = stats(vals)
                    p, marks = cell.published.get(m, (None, []))
                    rows.append({**base, "solver": lbl, "metric": m, "nfe": n, "nfe_counted": max(cell.counted),
                                 "macs_per_sample": cell.macs_per_sample, "value": rnd(m, mean), "std": rnd(m, std) if std is not None else None,
                                 "seeds": len(vals), "published": None if p is None else float(p["value"]),
                                 "difference": None if p is None else rnd(m, mean - float(p["value"])),
                                 "marks": " | ".join(marks), "published_solver": None if p is None else p["solver"],
                                 "published_source": None if p is None else f"{p['source']} {p['table']}"})
        for p, lbl in t.unmatched:
            m = pub.metric_key(p["metric"])
            rows.append({**base, "solver": lbl, "metric": m, "nfe": int(p["nfe"]), "nfe_counted": None,
                         "macs_per_sample": None, "value": None,
                         "std": None, "seeds": 0, "published": float(p["value"]), "difference": None,
                         "marks": "published row with no run here", "published_solver": p["solver"],
                         "published_source": f"{p['source']} {p['table']}"})
    return pd.DataFrame(rows)


def md_table(df: pd.DataFrame, index: bool = True) -> str:
    """A GitHub markdown table (pandas' to_markdown needs the tabulate package, which nfebench does not install)."""
    heads = ([df.index.name or ""] if index else []) + [
        " ".join(str(x) for x in c) if isinstance(c, tuple) else str(c) for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    align = (["---"] if index else []) + ["---:" if n or index else "---" for n in numeric]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(align) + "|"]
    for key, vals in df.iterrows():
        cells = ["" if (not isinstance(v, str) and pd.isna(v)) else str(v) for v in vals]
        lines.append("| " + " | ".join(([str(key)] if index else []) + cells) + " |")
    return "\n".join(lines) + "\n"


def tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("$", r"\$")):
        s = s.replace(a, b)
    return s


def render(tables: list[Table], metrics: list[str], fmt_name: str, x: str = "nfe") -> str:
    if fmt_name == "csv":
        return tidy_frame(tables, metrics).to_csv(index=False)
    out = []
    for t in tables:
        letters: dict = {}
        if fmt_name == "md":
            out.append(f"### {t.title}\n\n" + md_table(display_frame(t, metrics, False, letters, x)))
            out += [f"\n[{k}] {m}" for m, k in letters.items()]
            if t.unmatched:
                out.append(f"\n\nPublished rows with no run here ({len(t.unmatched)}):\n\n"
                           + md_table(unmatched_frame(t), index=False))
            out.append("\n\n")
        else:
            df = display_frame(t, metrics, True, letters, x)
            notes = "".join(rf"\textsuperscript{{{k}}}~{tex_escape(m)}. " for m, k in letters.items())
            out.append(df.to_latex(escape=False, multicolumn=True, multicolumn_format="c",
                                   column_format="l" + "r" * len(df.columns),
                                   caption=tex_escape(t.title) + (" " + notes if notes else "")))
            if t.unmatched:
                um = unmatched_frame(t).map(lambda v: tex_escape(str(v)))
                out.append(um.to_latex(index=False, escape=False,
                                       caption=f"Published rows with no run here: {tex_escape(label(t.model, t.model_diff))}"))
            out.append("\n")
    return "".join(out).rstrip() + "\n"


def load_tables(root: Path, metric: str | None = None, compare: str | None = None,
                strict: bool = False) -> tuple[list[Table], list[str]]:
    """The tables and metrics the command line renders (for scripts: tidy_frame(*load_tables(root)))."""
    if not Path(root).is_dir():
        raise NfebenchError(f"not a directory: {root}")
    tables = build_tables(scan(Path(root), strict))
    metrics = pick_metrics(tables, metric)
    tables = [t for t in tables if any(m in t.metrics for m in metrics)]
    if compare:
        compare_published(tables, metrics)
    return tables, metrics


# ---- command line -------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other nfebench error
        raise NfebenchError(message)


def _writable(path: Path, what: str) -> None:
    parent = path.resolve().parent
    if not parent.is_dir():
        raise NfebenchError(f"cannot write {what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NfebenchError(f"cannot write {what} {path}: folder {parent} is not writable")


def _check_macs(tables: list[Table]) -> None:
    bare = [rec for t in tables for r in t.rows.values() for c in r.cells.values() for rec in c.by_seed.values()
            if "compute" not in rec]
    if bare:
        raise NfebenchError(f"--x macs: {len(bare)} record(s) carry no compute part (made before MACs were "
                            f"recorded), e.g. {bare[0]['_path']}; rerun them or use --x nfe")


def main(argv=None) -> int:
    p = _Parser(prog="python -m results.collect", description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="a sweep (or runs, or merged) directory holding record.json files")
    p.add_argument("--metric", default=None, help="comma-separated metrics (default: all; 'is' = inception_score)")
    p.add_argument("--compare", default=None, help="'published': beside results/data/published_fid.csv")
    p.add_argument("--format", default="md", help="md (default), csv or tex")
    p.add_argument("--plot", type=Path, default=None, help="also draw metric vs counted NFE to FILE.png or FILE.svg")
    p.add_argument("--x", default="nfe", help="cost axis: nfe (counted model evaluations, default) or macs "
                                              "(multiply-accumulates per sample)")
    p.add_argument("--strict", action="store_true", help="a damaged record is an error, not a skipped warning")
    p.add_argument("--out", type=Path, default=None, help="write the table to FILE (atomically) instead of stdout")
    try:
        args = p.parse_args(argv)
        check_choice("--format", args.format, FORMATS)
        check_choice("--x", args.x, X_AXES)
        if args.compare is not None:
            check_choice("--compare", args.compare, ["published"])
        if args.plot is not None:
            if args.plot.suffix.lower() not in PLOT_SUFFIXES:
                raise NfebenchError(f"--plot {args.plot}: unknown image type; valid: {', '.join(PLOT_SUFFIXES)}")
            _writable(args.plot, "plot")
        if args.out is not None:
            _writable(args.out, "table")
        tables, metrics = load_tables(args.root, args.metric, args.compare, args.strict)
        if args.x == "macs":
            _check_macs(tables)
        text = render(tables, metrics, args.format, args.x)
        image = None
        if args.plot is not None:
            from .plot import plot_bytes

            image = plot_bytes(tables, metrics, args.plot.suffix.lower().lstrip("."), args.x)
        # everything is rendered before anything is written: a failure leaves no partial output
        if image is not None:
            atomic_write_bytes(args.plot, image)
        if args.out is not None:
            atomic_write_bytes(args.out, text.encode())
    except NfebenchError as err:
        return report(err)
    if args.out is None:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
