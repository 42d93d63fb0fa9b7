"""The CPU leaderboard: ranking and best-cell marking, the committed files, and the CI check that fails
when a committed number differs from a fresh run."""

import pandas as pd
from omegaconf import DictConfig, OmegaConf
import pytest

from results import leaderboard as lb

from helpers import run_module
from common.paths import REPO

COMMITTED = REPO / "results" / "leaderboard"
# A miniature of leaderboard_cpu: same experiment, sweeper and renderer, two solvers, two NFEs, one model.
MINI = ["hydra.sweeper.setups=[['model=gaussian','metrics=exact','num_samples=200','batch_size=200']]",
        "hydra.sweeper.runs=[['solver=ddim'],['solver=dpmpp'],['solver=dpmpp','solver.order=3']]", "nfe=3,4"]


def leaderboard(*args):
    return run_module("results.leaderboard", *args, timeout=600)


def test_check_passes_on_a_fresh_copy_and_fails_when_a_committed_number_changes(tmp_path):
    committed = tmp_path / "committed"
    r = leaderboard("run", "--launcher", "basic", "--out", str(committed), *MINI)
    assert r.returncode == 0, r.stderr
    csv = pd.read_csv(committed / "leaderboard.csv", dtype=str)
    assert len(csv) == 3 * 2 * 2  # solvers x NFEs x (fd_pixel, ode_rmse)
    assert set(csv["solver"]) == {"ddim", "dpmpp", "dpmpp(order=3)"}
    assert (committed / "fd_pixel.png").stat().st_size > 0 and (committed / "ode_rmse.svg").stat().st_size > 0
    r = leaderboard("check", "--launcher", "basic", "--committed", str(committed), *MINI)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "match the committed ones" in r.stdout

    # change one committed number (its last digit) in the CSV: the regenerated leaderboard must disagree
    row = csv.index[(csv["metric"] == "ode_rmse") & (csv["solver"] == "dpmpp") & (csv["nfe"] == "4")][0]
    old = csv.loc[row, "value"]
    new = old[:-1] + str((int(old[-1]) + 1) % 10)
    text = (committed / "leaderboard.csv").read_text()
    line = f"gaussian,ode_rmse,dpmpp,4,4,{old},"
    assert text.count(line) == 1
    (committed / "leaderboard.csv").write_text(text.replace(line, f"gaussian,ode_rmse,dpmpp,4,4,{new},"))
    r = leaderboard("check", "--launcher", "basic", "--committed", str(committed), *MINI)
    assert r.returncode == 2
    assert f"-gaussian,ode_rmse,dpmpp,4,4,{new}," in r.stdout and f"+gaussian,ode_rmse,dpmpp,4,4,{old}," in r.stdout
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nfebench: error: the committed leaderboard")


def frame(rows):
    return pd.DataFrame([{"model": "gaussian", "metric": "ode_rmse", "solver": s, "nfe": n, "counted_nfe": c,
                          "value": lb.rounded(v), "num_samples": 10, "seed": 0} for s, n, c, v in rows])


def test_ranks_per_nfe_on_rounded_values_and_bolds_the_best_cell_of_each_column():
    df = lb.ranked(frame([("a", 3, 3, 0.5), ("b", 3, 3, 0.25), ("c", 3, 2, 0.9),
                          ("a", 5, 5, 0.1), ("b", 5, 5, 0.100004), ("c", 5, 5, 0.3)]))
    ranks = {(r.solver, r.nfe): r.rank for r in df.itertuples()}
    assert ranks == {("a", 3): 2, ("b", 3): 1, ("c", 3): 3, ("a", 5): 1, ("b", 5): 1, ("c", 5): 3}
    table = lb.markdown_table(df).splitlines()
    assert table[0] == "| solver | NFE 3 | NFE 5 | mean rank |"
    # rows by mean rank; ties at 4 significant digits share the best cell; counted < budget is shown
    assert table[2] == "| b | **0.25** | **0.1** | 1.00 |"
    assert table[3] == "| a | 0.5 | **0.1** | 1.50 |"
    assert table[4] == "| c | 0.9 (2) | 0.3 | 3.00 |"


def test_rows_name_only_the_options_that_differ_from_the_solver_config():
    assert lb.solver_label("dpmpp", {"method": "multistep", "order": 3, "lower_order_final": "below_10",
                                     "outer_grid": "logsnr"}) == "dpmpp(order=3)"
    assert lb.solver_label("ddim", {"eta": 0.0, "clip_x0": None}) == "ddim"
    assert lb.rounded(0.000123456) == "0.0001235" and lb.rounded(1234.5) == "1234"


def test_committed_leaderboard_covers_every_table_solver_and_nfe():
    csv = pd.read_csv(COMMITTED / "leaderboard.csv")
    readme = (COMMITTED / "README.md").read_text()
    from sampling.registry import SOLVERS, get_solver

    # a solver that needs a model method only the analytic models have (declared model_needs: dlg) runs on
    # gaussian and digits at the NFEs it can afford; every other solver fills every table
    needy = {name for name in SOLVERS if get_solver(name).model_needs}
    # a solver the sweep runs only at some NFEs (`nfe: [...]` beside its plain `solver=X` row: dc_solver, whose
    # fit is redone for every grid) fills exactly those columns
    partial = {}
    for run in OmegaConf.load(REPO / "configs" / "experiment" / "leaderboard_cpu.yaml").hydra.sweeper.runs:
        if isinstance(run, DictConfig) and run.get("nfe") and "where" not in run and len(run.overrides) == 1:
            partial[run.overrides[0].split("=", 1)[1]] = set(run.nfe)
    assert partial == {"dc_solver": {5}}
    for name, nfes in partial.items():
        rows = csv[csv["solver"] == name]
        assert set(rows["nfe"]) == nfes and len(rows) == len(lb.TABLES) * len(nfes), name
    ranked = csv  # every row takes part in the ranking
    csv = csv[~csv["solver"].str.split("(").str[0].isin(needy | set(partial))]
    solvers = None
    for model, metric, _ in lb.TABLES:
        sub = csv[(csv["model"] == model) & (csv["metric"] == metric)]
        assert set(sub["nfe"]) == {3, 4, 5, 6, 8, 10, 15, 20, 50}, (model, metric)
        assert solvers is None or set(sub["solver"]) == solvers
        solvers = set(sub["solver"])
        assert len(sub) == len(solvers) * 9
        table = ranked[(ranked["model"] == model) & (ranked["metric"] == metric)]
        assert (table.groupby("nfe")["rank"].min() == 1).all()
        assert f"## `{model}`: `{metric}`" in readme
        assert (COMMITTED / f"{metric}.png").stat().st_size > 0 and (COMMITTED / f"{metric}.svg").is_file()
    assert {"ddim", "ddim(eta=1.0)", "dpmpp(order=3)", "dpmpp(order=3,variant=exact)", "heun(final_step=edm)", "unipc(order=2)",
            "unipc(order=2,variant=bh2)", "unipc(variant=bh2)", "pndm", "time_shift"} <= solvers
    assert readme.count("**") >= 2 * 9 * len(lb.TABLES)


def test_render_refuses_an_empty_sweep_in_one_line_and_writes_nothing(tmp_path):
    r = leaderboard("render", str(tmp_path), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.strip() == f"nfebench: error: no complete run records under {tmp_path}"
    assert not (tmp_path / "out").exists()
