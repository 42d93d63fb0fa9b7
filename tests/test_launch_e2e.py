"""launch.py end to end, through a subprocess, as a user runs it."""
import json

import pytest
from helpers import launch, run_module

SMALL = ["num_samples=40", "batch_size=16"]


def test_default_experiment_writes_a_complete_record(tmp_path):
    r = launch(*SMALL, f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["status"] == "complete"
    assert rec["model"]["name"] == "digits" and rec["solver"]["name"] == "dpmpp"
    assert rec["solver"]["options"]["order"] == 2 and rec["config"]["metrics"]["name"] == "exact"
    assert rec["nfe"] == {"requested": 10, "counted": 10, "network_evals": 10}
    assert rec["samples"]["index_range"] == [0, 40] and rec["samples"]["seed"] == 0
    assert set(rec["metrics"]) == {"fd_pixel", "ode_rmse"} and rec["metrics"]["ode_rmse"] > 0
    assert rec["timing"]["model_s"] > 0 and rec["timing"]["total_s"] >= rec["timing"]["model_s"]
    assert rec["versions"]["torch"] and "commit" in rec["git"] and len(rec["config_hash"]) == 16
    assert len(rec["schedule"]["t_grid"]) == 11
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert (tmp_path / "metric_state.npz").exists()
    assert r.stdout.count("\n") == 1 and "fd_pixel=" in r.stdout and "nfe 10 (counted 10)" in r.stdout
    assert not list(tmp_path.glob(".*.tmp")), "temp files must be renamed away"


@pytest.mark.parametrize("args,counted,steps", [
    (["solver=dpmpp", "nfe=10"], 10, 10),
    (["solver=ddim", "nfe=6"], 6, 6),
    (["solver=euler", "nfe=6"], 6, 6),
    (["solver=heun", "nfe=10"], 9, 5),
    (["solver=dpmpp", "solver.order=3", "nfe=7", "model=gaussian", "schedule=time_quadratic", "seed=3"], 7, 7),
    (["model=gaussian", "model/noise_schedule=vp_discrete", "schedule=karras", "denoise_to_zero=true"], 10, 9),
])
def test_solver_spellings_on_the_command_line_count_their_nfe_and_steps(tmp_path, args, counted, steps):
    r = launch(*SMALL, *args, f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["nfe"]["counted"] == counted and rec["solver"]["steps"] == steps


def test_sweep_collects_into_a_table_whose_error_falls_with_nfe(tmp_path):
    r = launch("-m", *SMALL, "model=gaussian", "solver=ddim,dpmpp", "nfe=5,10", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert len(list(tmp_path.rglob("record.json"))) == 4
    c = run_module("results.collect", str(tmp_path), "--metric", "ode_rmse", "--out", str(tmp_path / "table.md"))
    assert c.returncode == 0 and c.stdout == "", c.stderr  # --out: the table goes to the file only
    text = (tmp_path / "table.md").read_text()
    assert text.startswith("### gaussian — metrics=exact, ")
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert lines[0] == "| solver | ode_rmse 5 | ode_rmse 10 |" and len(lines) == 4
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert [c[0] for c in cells] == ["ddim", "dpmpp"]  # default options: bare names
    vals = [[float(v) for v in c[1:]] for c in cells]
    assert all(v10 < v5 for v5, v10 in vals), "error must fall with NFE"


def test_collector_on_a_folder_without_records_is_one_error_line(tmp_path):
    c = run_module("results.collect", str(tmp_path))
    assert c.returncode == 2 and c.stderr.count("\n") == 1 and "no complete run records" in c.stderr


@pytest.mark.parametrize("args,message", [
    (["solver=nope"], "unknown solver 'nope'; valid: "),
    (["model=nope"], "unknown model 'nope'; valid: "),
    (["schedule=nope"], "unknown schedule 'nope'; valid: "),
    (["nfe=0"], "nfe must be an integer >= 1"),
    (["solver.order=abc"], "bad options for solver 'dpmpp'"),
    (["+solver.foo=1"], "bad options for solver 'dpmpp'"),
    (["nfee=10"], "Could not override 'nfee'. To append to your config use +nfee=10"),
    (["-m", "solver=ddim,nope"], "unknown solver 'nope'; valid: "),
    (["nfe=-3"], "nfe must be an integer >= 1"),
    (["solver=heun", "solver.final_euler=false", "nfe=1"], "below the minimum of solver 'heun' (2 NFE)"),
    (["num_samples=0"], "num_samples must be an integer >= 1"),
    (["model/noise_schedule=nope"], "unknown model/noise_schedule 'nope'; valid: edm, ve, vp_cosine"),
    (["model/noise_schedule=edm", "model.noise_schedule.sigma_max=1e39", "dtype=float32"],
     "non-finite sample: NaN/Inf first appeared at model evaluation 1 of"),
])
def test_bad_input_is_one_line_and_leaves_no_record(tmp_path, args, message):
    r = launch(*SMALL, *args, f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "record.json").exists() and not (tmp_path / "samples.png").exists()
    assert not (tmp_path / "metric_state.npz").exists()
