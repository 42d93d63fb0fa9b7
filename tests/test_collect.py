"""results.collect on hand-made records: metrics side by side, tables per model, seeds, shards,
--compare published with protocol marks, md/csv/tex, plots, and every bad input."""
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from launch.records import load_record
from results.collect import main
from results.merge import main as merge_main
from results.published import published_rows
from results.settings import compose, label, settings
from common.errors import NfebenchError
from helpers import launch, run_module

EXACT = {"suite": "exact", "fd_pixel_reference": "exact marginal", "ode_rmse_reference": "closed form"}


def fid_protocol(n=50000, extractor="nfebench-tiny", reference="npz:/data/cifar10-train.npz", impl="torch-fidelity"):
    return {"suite": "fid_is", "implementation": {"name": impl, "version": "0.4.0"},
            "extractor": {"name": extractor, "sha256": "6418b86ff6b3ec15", "file": None},
            "reference": {"id": reference, "sha256": "b362c9ad"}, "num_samples": n, "protocol_num_samples": 50000}


def record(root, name, *overrides, model="gaussian", solver="ddim", nfe=4, counted=None, seed=0, metrics=None,
           protocol=None, index_range=None, **extra):
    """Write <root>/<name>/record.json shaped as launch/run.py writes it, with the config Hydra composes."""
    cfg = compose((f"model={model}", f"solver={solver}", f"nfe={nfe}", f"seed={seed}", *overrides))
    assert cfg is not None, overrides
    cfg.pop("hydra", None)
    lo, hi = index_range or (0, cfg["num_samples"])
    cfg["sample_offset"], cfg["num_samples"] = lo, hi - lo
    opts = {k: v for k, v in cfg["solver"].items() if k != "name"}
    proto = {**(protocol or {**EXACT, "num_samples": hi - lo}), "seed": seed, "index_range": [lo, hi]}
    rec = {"status": "complete", "config": cfg, "config_hash": f"{name}-{seed}-{lo}",
           "model": {"name": model}, "solver": {"name": solver, "options": opts},
           "nfe": {"requested": nfe, "counted": nfe if counted is None else counted},
           "metrics": metrics or {"fd_pixel": 1.0, "ode_rmse": 0.1}, "metrics_protocol": proto,
           "samples": {"num_samples": hi - lo, "seed": seed, "index_range": [lo, hi]}, "timing": {"total_s": 1.0},
           **extra}
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "record.json").write_text(json.dumps(rec))
    return rec


def collect(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(rc, err):
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("nfebench: error:"), (rc, err)
    return lines[0]


def md_rows(text):
    """{solver: [cells]} of every markdown table body in text."""
    out = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| solver"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells[1:]
    return out


# ---- labels -------------------------------------------------------------------------------------

def test_row_labels_name_only_what_differs_from_the_solver_defaults():
    cfg = lambda *o: compose(("model=gaussian", *o))  # noqa: E731
    assert label("ddim", settings(cfg("solver=ddim"))) == "ddim"
    assert label("ddim", settings(cfg("solver=ddim", "solver.eta=1.0"))) == "ddim(eta=1.0)"
    assert label("heun", settings(cfg("solver=heun"))) == "heun"  # karras is heun's own grid
    assert label("heun", settings(cfg("solver=heun", "schedule=logsnr", "solver.final_euler=false"))) == \
        "heun(final_euler=false, schedule=logsnr)"
    assert label("dpmpp", settings(cfg("solver=dpmpp", "schedule=karras", "schedule.rho=5", "t_end=0.002"))) == \
        "dpmpp(schedule=karras, schedule.rho=5, t_end=0.002)"
    # batch size, seeds and sample counts never split a row
    assert settings(cfg("solver=ddim", "batch_size=7", "seed=3", "num_samples=9")) == {}


# ---- tables -------------------------------------------------------------------------------------

def test_several_metrics_one_table_per_model_and_counted_nfe(tmp_path, capsys):
    record(tmp_path, "a", nfe=4, metrics={"fd_pixel": 34.4811, "ode_rmse": 0.23312})
    record(tmp_path, "b", nfe=6, metrics={"fd_pixel": 36.852, "ode_rmse": 0.17261})
    record(tmp_path, "c", solver="heun", nfe=4, counted=3, metrics={"fd_pixel": 36.524, "ode_rmse": 0.39034})
    record(tmp_path, "d", "solver.eta=1.0", nfe=4, metrics={"fd_pixel": 5.0, "ode_rmse": 0.5})
    record(tmp_path, "e", model="digits", nfe=4, metrics={"fd_pixel": 0.5, "ode_rmse": 0.01})
    rc, out, err = collect(capsys, tmp_path)
    assert rc == 0, err
    heads = [ln for ln in out.splitlines() if ln.startswith("### ")]
    assert len(heads) == 2 and heads[0].startswith("### digits") and heads[1].startswith("### gaussian")
    gauss = md_rows(out.split("### gaussian")[1])
    assert out.split("### gaussian")[1].splitlines()[2] == "| solver | fd_pixel 4 | fd_pixel 6 | ode_rmse 4 | ode_rmse 6 |"
    assert gauss["ddim"] == ["34.48", "36.85", "0.2331", "0.1726"]
    assert gauss["ddim(eta=1.0)"] == ["5", "", "0.5", ""]
    assert gauss["heun"][0] == "36.52 (counted 3)" and gauss["heun"][2] == "0.3903 (counted 3)"
    assert "digits" not in md_rows(out.split("### gaussian")[1]) and md_rows(out.split("### gaussian")[0])["ddim"][0] == "0.5"
    assert list(gauss) == ["ddim", "ddim(eta=1.0)", "heun"]  # a solver's default first, then its variants
    rc, out, _ = collect(capsys, tmp_path, "--metric", "ode_rmse")
    assert "fd_pixel" not in out and "ode_rmse 4" in out
    record(tmp_path, "f", model="cifar10_ddpm", nfe=10, protocol=fid_protocol(), metrics={"fid": 3.0})
    rc, out, _ = collect(capsys, tmp_path, "--metric", "fid")  # tables without the metric are left out
    assert rc == 0 and [ln for ln in out.splitlines() if ln.startswith("### ")] == [
        "### cifar10_ddpm — metrics=fid_is, torch-fidelity 0.4.0, extractor nfebench-tiny, "
        "reference npz:/data/cifar10-train.npz, 50000 samples"]


def test_repeated_seeds_are_mean_and_std_and_fid_rounds_to_two_decimals(tmp_path, capsys):
    for seed, v in enumerate([10.0, 11.0, 12.004]):
        record(tmp_path, f"s{seed}", model="cifar10_ddpm", nfe=10, seed=seed, protocol=fid_protocol(1000),
               metrics={"fid": v, "inception_score": 9.0 + seed})
    rc, out, err = collect(capsys, tmp_path, "--metric", "fid,is")
    assert rc == 0, err
    (cells,) = md_rows(out).values()
    assert cells == ["11.00 ± 1.00", "10.00 ± 1.00"]
    assert "FID 10" in out and "IS 10" in out
    rc, out, _ = collect(capsys, tmp_path, "--format", "csv")
    df = pd.read_csv(io.StringIO(out))
    fid = df[df.metric == "fid"].iloc[0]
    assert (fid.value, fid["std"], fid.seeds, fid.nfe) == (11.0, 1.0, 3, 10)


def test_merged_shards_replace_their_shards_and_unmerged_shards_are_an_error(tmp_path, capsys):
    a = record(tmp_path, "shard0", nfe=4, index_range=(0, 10), metrics={"fd_pixel": 1.0, "ode_rmse": 0.1})
    b = record(tmp_path, "shard1", nfe=4, index_range=(10, 20), metrics={"fd_pixel": 3.0, "ode_rmse": 0.3})
    rc, _, err = collect(capsys, tmp_path)
    assert "unmerged shards" in one_error_line(rc, err) and "results.merge" in err
    record(tmp_path, "merged/h", nfe=4, index_range=(0, 20), metrics={"fd_pixel": 2.5, "ode_rmse": 0.25},
           shards=[{"path": "x", "config_hash": a["config_hash"]}, {"path": "y", "config_hash": b["config_hash"]}])
    rc, out, err = collect(capsys, tmp_path)
    assert rc == 0, err
    assert md_rows(out) == {"ddim": ["2.5", "0.25"]} and "20 samples" in out


def test_incompatible_protocols_in_one_cell_are_one_error_line(tmp_path, capsys):
    record(tmp_path, "a", model="cifar10_ddpm", nfe=10, protocol=fid_protocol(), metrics={"fid": 5.0})
    record(tmp_path, "b", model="cifar10_ddpm", nfe=10, seed=1, protocol=fid_protocol(extractor="other"),
           metrics={"fid": 6.0})
    out = tmp_path / "table.md"
    rc, _, err = collect(capsys, tmp_path, "--out", out)
    line = one_error_line(rc, err)
    assert "incompatible metric protocols" in line and "extractor.name" in line
    assert not out.exists()


def test_runs_that_differ_in_something_the_label_does_not_show_are_refused(tmp_path, capsys, monkeypatch):
    record(tmp_path, "a", "batch_size=7", nfe=4)
    record(tmp_path, "b", "batch_size=9", nfe=4)  # the same samples in other batches: one measurement
    assert collect(capsys, tmp_path)[0] == 0
    import results.settings

    # a setting the labels do not show (as a key added later might be) must not be averaged away
    monkeypatch.setattr(results.settings, "NOT_SETTINGS", results.settings.NOT_SETTINGS | {"t_end"})
    record(tmp_path, "c", "t_end=0.01", nfe=4)
    rc, _, err = collect(capsys, tmp_path)
    assert "differ in t_end" in one_error_line(rc, err)


def test_csv_and_latex_outputs_carry_the_markdown_tables_numbers(tmp_path, capsys):
    record(tmp_path, "a", nfe=4, metrics={"fd_pixel": 34.4811, "ode_rmse": 0.23312})
    record(tmp_path, "b", "solver.eta=0.5", nfe=6, counted=5, metrics={"fd_pixel": 1.23456, "ode_rmse": 0.0123456})
    record(tmp_path, "c", "solver.eta=0.5", nfe=6, counted=5, seed=1, metrics={"fd_pixel": 1.3, "ode_rmse": 0.0124})
    rc, md, _ = collect(capsys, tmp_path)
    assert rc == 0
    csv_path, tex_path = tmp_path / "t.csv", tmp_path / "t.tex"
    assert collect(capsys, tmp_path, "--format", "csv", "--out", csv_path)[0] == 0
    assert collect(capsys, tmp_path, "--format", "tex", "--out", tex_path)[0] == 0
    df = pd.read_csv(csv_path)
    assert len(df) == 4 and set(df.solver) == {"ddim", "ddim(eta=0.5)"}
    row = df[(df.solver == "ddim(eta=0.5)") & (df.metric == "ode_rmse")].iloc[0]
    assert (row.nfe, row.nfe_counted, row.seeds) == (6, 5, 2)
    assert row.value == 0.01237  # mean 0.0123728, 4 significant digits
    tex = tex_path.read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex  # booktabs
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    tex_rows = {c[0]: c[1:] for c in ([x.strip() for x in ln.rstrip("\\ ").split("&")] for ln in body)}
    md_cells = md_rows(md)
    assert set(tex_rows) == {"ddim", "ddim(eta=0.5)"}
    for solver, cells in md_cells.items():
        assert [c.replace(r" $\pm$ ", " ± ") for c in tex_rows[solver]] == cells
    assert md_cells["ddim(eta=0.5)"][1] == "1.267 ± 0.04627 (counted 5)"
    # the CSV's numbers are the table's numbers
    mean = df[(df.solver == "ddim(eta=0.5)") & (df.metric == "fd_pixel")].iloc[0]
    assert f"{mean.value:.4g} ± {mean['std']:.4g}" in md_cells["ddim(eta=0.5)"][1]


# ---- published numbers --------------------------------------------------------------------------

def cifar_records(root):
    record(root, "a", "schedule=ddim_quadratic", model="cifar10_ddpm", nfe=10, protocol=fid_protocol(),
           metrics={"fid": 13.0, "inception_score": 8.5})
    record(root, "b", model="cifar10_ddpm", nfe=20, counted=19, protocol=fid_protocol(),
           metrics={"fid": 7.0, "inception_score": 8.7})  # time_uniform: DDIM used quadratic on CIFAR-10
    record(root, "c", "solver.variance=fixed_large", "schedule=ddim_quadratic", model="cifar10_ddpm", solver="ddpm",
           nfe=10, protocol=fid_protocol(n=1000, reference="npz:/data/celeba.npz", extractor="inception-v3-compat"),
           metrics={"fid": 300.0, "inception_score": 2.0})
    record(root, "d", "solver.eta=0.3", model="cifar10_ddpm", nfe=10, protocol=fid_protocol(), metrics={"fid": 20.0})


def test_compare_published_matches_marks_and_lists_unmatched_rows(tmp_path, capsys):
    cifar_records(tmp_path)
    rc, out, err = collect(capsys, tmp_path, "--compare", "published", "--metric", "fid")
    assert rc == 0, err
    tables = [t for t in out.split("### ") if t.strip()]
    ours = {t.split("\n", 1)[0]: t for t in tables}
    main_table = next(t for h, t in ours.items() if "1000 samples" not in h)
    rows = md_rows(main_table.split("Published rows")[0])
    # DDIM Table 1, CIFAR-10, eta = 0, S = 10 and 20: 13.36 and 6.84
    assert rows["ddim(schedule=ddim_quadratic)"][0].startswith("13.00 / 13.36 (−0.36) [")
    assert rows["ddim"][1].startswith("7.00 (counted 19) / 6.84 (+0.16) [")
    assert rows["ddim(eta=0.3)"][0] == "20.00"  # no published eta = 0.3 row
    notes = dict(re.findall(r"^\[([a-z,]+)\] (.*)$", main_table, re.M))
    assert "FID implementation: published not stated; ours torch-fidelity 0.4.0" in notes.values()
    assert any(v.startswith("extractor weights: ours nfebench-tiny") for v in notes.values())
    assert "NFE convention: published 20; ours counted 19" in notes.values()
    assert "sampling set-up: published schedule=ddim_quadratic; ours solver defaults" in notes.values()
    assert not any(v.startswith("sample count") or v.startswith("reference") for v in notes.values())
    setup_letter = next(k for k, v in notes.items() if v.startswith("sampling set-up"))
    assert setup_letter in rows["ddim"][1].split("[")[1] and setup_letter not in rows["ddim(schedule=ddim_quadratic)"][0]
    # sigma-hat row = ddpm with beta_t variance on the same grid: 367.43; its own protocol marks
    other = next(t for h, t in ours.items() if "1000 samples" in h)
    cell = md_rows(other.split("Published rows")[0])["ddpm(variance=fixed_large, schedule=ddim_quadratic)"][0]
    assert cell.startswith("300.00 / 367.43 (−67.43) [")
    onotes = dict(re.findall(r"^\[([a-z,]+)\] (.*)$", other, re.M))
    assert "sample count: published 50000; ours 1000" in onotes.values()
    assert "reference statistics: published cifar10-train; ours npz:/data/celeba.npz" in onotes.values()
    assert not any(v.startswith("extractor weights") for v in onotes.values())
    # unmatched published rows are listed, not dropped: DDIM Table 1 CIFAR-10 has 25 FID rows and the
    # model card one more (DDPM ancestral, 1000 steps, no nfebench mapping); 2 are matched here
    listed = [ln for ln in main_table.split("Published rows")[1].splitlines() if ln.startswith("| DD")]
    assert len(listed) == 26 - 2 and "Published rows with no run here (24)" in main_table
    assert any(ln.startswith("| DDIM eta=0.0 | time_quadratic | 1000 | FID | 4.04 | 50000 |") for ln in listed)
    assert any(ln.startswith("| DDPM ancestral |") and ln.endswith("| no nfebench mapping |") for ln in listed)
    # CSV carries ours, published and the difference as numbers
    rc, out, _ = collect(capsys, tmp_path, "--compare", "published", "--metric", "fid", "--format", "csv")
    df = pd.read_csv(io.StringIO(out))
    hit = df[(df.solver == "ddim(schedule=ddim_quadratic)") & (df.nfe == 10) & (df.seeds > 0)].iloc[0]
    assert (hit.value, hit.published, hit.difference, hit.published_solver) == (13.0, 13.36, -0.36, "DDIM eta=0.0")
    assert (df.seeds == 0).sum() == 26 - 2 + 26 - 1  # each table lists its own unmatched rows


def test_compare_published_without_matches_names_the_keys_tried(tmp_path, capsys):
    record(tmp_path, "a", nfe=4)
    record(tmp_path, "b", "solver.eta=0.3", model="cifar10_ddpm", nfe=10, protocol=fid_protocol(), metrics={"fid": 20.0})
    rc, _, err = collect(capsys, tmp_path, "--compare", "published")
    line = one_error_line(rc, err)
    assert "no row of published_fid.csv matches" in line
    assert "model 'gaussian' has no checkpoint" in line and "(CIFAR-10 32x32, DDPM (Ho et al. 2020) CIFAR-10, ddim(eta=0.3), NFE 10)" in line


def test_published_rows_filters_and_rejects_unknown_names():
    src = "DDIM (Song, Meng, Ermon, ICLR 2021) arXiv:2010.02502"
    rows = published_rows(source=src, table="Table 1", checkpoint="DDPM (Ho et al. 2020) CIFAR-10")
    assert len(rows) == 25 and set(rows.nfe) == {10, 20, 50, 100, 1000} and (rows.dataset == "CIFAR-10 32x32").all()
    assert len(published_rows(source=src, table="Table 3")) == 16
    with pytest.raises(NfebenchError, match="no published row has table 'Table 9'.*valid: Table 1; Table 3"):
        published_rows(source=src, table="Table 9")


# ---- plots --------------------------------------------------------------------------------------

def test_plot_png_and_svg_with_published_points(tmp_path, capsys):
    from PIL import Image

    cifar_records(tmp_path)
    png, svg = tmp_path / "fid.png", tmp_path / "fid.svg"
    assert collect(capsys, tmp_path, "--compare", "published", "--metric", "fid", "--plot", png)[0] == 0
    assert collect(capsys, tmp_path, "--compare", "published", "--metric", "fid", "--plot", svg)[0] == 0
    with Image.open(png) as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 300
    assert ET.parse(svg).getroot().tag.endswith("svg")  # well-formed SVG
    svg_text = svg.read_text()
    assert "ddim(schedule=ddim_quadratic), published" in svg_text  # hollow published points, labelled
    assert "NFE (counted model evaluations)" in svg_text and "cifar10_ddpm" in svg_text
    assert svg.stat().st_size > 1000


# ---- damaged records and bad input --------------------------------------------------------------

def test_load_record_names_the_damaged_file(tmp_path):
    p = tmp_path / "record.json"
    p.write_text('{"status": "complete", "config": {')
    with pytest.raises(NfebenchError) as err:
        load_record(p)
    assert str(p) in str(err.value) and "JSON" in str(err.value) and "\n" not in str(err.value)
    p.write_text('{"status": "complete"}')
    with pytest.raises(NfebenchError) as err:
        load_record(p)
    assert str(p) in str(err.value) and "config_hash" in str(err.value) and "\n" not in str(err.value)


def test_truncated_and_keyless_records_are_skipped_with_a_warning_or_refused_with_strict(tmp_path, capsys):
    record(tmp_path, "good", nfe=4, metrics={"fd_pixel": 2.0, "ode_rmse": 0.2})
    bad = tmp_path / "bad" / "record.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps(record(tmp_path, "tmp", nfe=6))[:100])
    keyless = record(tmp_path, "keyless", nfe=8)
    del keyless["nfe"]["counted"]
    (tmp_path / "keyless" / "record.json").write_text(json.dumps(keyless))
    (tmp_path / "tmp" / "record.json").unlink()
    rc, out, err = collect(capsys, tmp_path)
    assert rc == 0 and md_rows(out) == {"ddim": ["2", "0.2"]}
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("nfebench: warning:") for w in warnings)
    assert str(bad) in warnings[0] and "missing nfe.counted" in warnings[1]
    rc, out, err = collect(capsys, tmp_path, "--strict")
    assert str(bad) in one_error_line(rc, err) and out == ""


@pytest.mark.parametrize("args, needle", [
    (["--format", "xls"], "unknown --format 'xls'; valid: md, csv, tex"),
    (["--plot", "{tmp}/missing/fig.png"], "folder {tmp}/missing does not exist"),
    (["--plot", "{tmp}/a_file/fig.png"], "cannot write plot"),
    (["--plot", "{tmp}/fig.pdf"], "unknown image type"),
    (["--out", "{tmp}/missing/t.md"], "cannot write table"),
    (["--metric", "fid"], "metric 'fid' is in no record"),
    (["--compare", "papers"], "unknown --compare 'papers'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, needle):
    runs = tmp_path / "runs"
    record(runs, "a", nfe=4)
    (tmp_path / "a_file").write_text("x")
    before = sorted(p for p in tmp_path.rglob("*"))
    rc, out, err = collect(capsys, runs, *[a.format(tmp=tmp_path) for a in args])
    assert needle.format(tmp=tmp_path) in one_error_line(rc, err) and out == ""
    assert sorted(p for p in tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_collect_command_line_reads_a_real_sweep_and_its_merged_shards(tmp_path):
    """launch.py writes the records; `python -m results.collect` in a subprocess reads them as a user would."""
    sweep = tmp_path / "sweep"
    r = launch("-m", "model=gaussian", "solver=ddim,heun", "nfe=4,6", "num_samples=16", "grid_images=0",
               f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    r = launch("-m", "model=gaussian", "solver=ddim", "nfe=8", "num_samples=8", "sample_offset=0,8", "grid_images=0",
               f"hydra.sweep.dir={sweep / 'shards'}")
    assert r.returncode == 0, r.stderr
    assert merge_main([str(sweep / "shards")]) == 0
    (merged,) = [json.loads(p.read_text()) for p in (sweep / "shards" / "merged").glob("*/record.json")]
    r = run_module("results.collect", str(sweep), "--metric", "ode_rmse", "--format", "csv", timeout=120)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(io.StringIO(r.stdout))
    recs = {(json.loads(p.read_text())["solver"]["name"], json.loads(p.read_text())["nfe"]["requested"]):
            json.loads(p.read_text()) for p in sweep.glob("*/record.json")}
    assert len(df) == 5 and set(df.solver) == {"ddim", "heun"}
    shard_cell = df[df.nfe == 8].iloc[0]  # the merged record, not its two shards
    assert shard_cell.seeds == 1 and shard_cell.value == float(f"{merged['metrics']['ode_rmse']:.4g}")
    for _, row in df[df.nfe != 8].iterrows():
        rec = recs[(row.solver, row.nfe)]
        assert row.nfe_counted == rec["nfe"]["counted"]
        assert row.value == float(f"{rec['metrics']['ode_rmse']:.4g}")
    assert set(df[df.solver == "heun"].nfe_counted) == {3, 5}  # EDM's 2N-1 within budgets 4 and 6
    r = run_module("results.collect", str(sweep), "--format", "xls", timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["nfebench: error: unknown --format 'xls'; valid: md, csv, tex"]


def test_every_entry_of_the_published_map_names_real_csv_rows_and_composes():
    """A typo in results/data/published_map.yaml would silently match nothing: every name must exist."""
    from results.published import load_map, load_published

    csv, data = load_published(), load_map()
    for model, ck in data["checkpoints"].items():
        assert compose((f"model={model}",)) is not None, model
        rows = csv[(csv.dataset == ck["dataset"]) & csv.checkpoint.isin(ck["checkpoint"])]
        assert set(rows.checkpoint) == set(ck["checkpoint"]), model
    for entry in data["solvers"]:
        rows = csv[(csv.solver == entry["solver"]) & (csv.schedule == entry["schedule"])]
        if entry.get("source"):
            rows = rows[rows.source.str.startswith(entry["source"])]
        assert len(rows), entry
        cfg = compose(tuple(entry["overrides"]))
        assert cfg is not None and cfg["solver"]["name"] == entry["overrides"][0].split("=")[1], entry
    assert set(data["metrics"]) == set(csv.metric)


def test_x_macs_puts_macs_per_sample_in_cells_csv_and_plot_and_refuses_records_without_them(tmp_path, capsys):
    for nfe, macs in ((4, 2.5e6), (8, 5e6)):
        record(tmp_path, f"r{nfe}", nfe=nfe, compute={"macs_per_sample": macs, "macs_total": 10 * macs})
    rc, out, err = collect(capsys, tmp_path, "--metric", "fd_pixel", "--x", "macs")
    assert rc == 0, err
    assert md_rows(out)["ddim"] == ["1 @ 2.5M", "1 @ 5M"], out
    rc, out, err = collect(capsys, tmp_path, "--metric", "fd_pixel", "--format", "csv")
    assert rc == 0 and list(pd.read_csv(io.StringIO(out))["macs_per_sample"]) == [2.5e6, 5e6]
    rc, out, err = collect(capsys, tmp_path, "--x", "macs", "--plot", tmp_path / "m.svg", "--out", tmp_path / "t.md")
    assert rc == 0 and b"MACs per sample" in (tmp_path / "m.svg").read_bytes()
    record(tmp_path, "old", nfe=6)  # made before records carried compute
    rc, out, err = collect(capsys, tmp_path, "--x", "macs")
    assert one_error_line(rc, err).startswith("nfebench: error: --x macs: 1 record(s) carry no compute part")
    assert collect(capsys, tmp_path)[0] == 0  # the NFE axis still takes them
