"""Replay experiments (configs/experiment/): each composes, its dry run plans exactly the published rows it
names (NFE, solver options, grid, the paper's cost count), and the sweeper expands `runs:` for any launcher."""
import json
import re

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hydra_plugins.nfebench_launchers.sweeper import expand, run_overrides
from launch.dry_run import plan_run
from launch.experiment import experiment_names, published_rows
from results import published as collector_published
import sampling.solvers  # noqa: F401  (registers every solver, so SOLVERS is complete)
from sampling.registry import SOLVERS, get_solver

from helpers import CONFIGS, compose_cfg, launch, run_module

DDIM = "DDIM (Song, Meng, Ermon, ICLR 2021) arXiv:2010.02502"

# The papers' protocols, written down here independently of the experiment files: the CSV's solver label ->
# nfebench solver and options (DDIM's eta = sigma_hat is DDPM's fixed_large variance on DDIM's grid, Table 3
# calls eta = 1 "DDPM"), and the CSV's schedule -> the DDIM reference code's skip grid.
PAPER_SOLVERS = {
    "DDIM eta=0.0": ("ddim", {"eta": 0.0}), "DDIM eta=0.2": ("ddim", {"eta": 0.2}),
    "DDIM eta=0.5": ("ddim", {"eta": 0.5}), "DDIM eta=1.0": ("ddim", {"eta": 1.0}),
    "DDIM eta=sigma_hat": ("ddpm", {"variance": "fixed_large"}), "DDPM eta=1.0": ("ddim", {"eta": 1.0}),
}
PAPER_GRIDS = {"time_quadratic": "ddim_quadratic", "time_uniform": "ddim_uniform"}
EDM_REPLAYS = ["diffsampler_cifar10_edm", "diffsampler_ffhq64_edm", "diffsampler_imagenet64_edm",
               "dpmv3_table1_cifar10_edm", "dpmv3_table1_cifar10_scoresde"]
ZOO_MODELS = ["cifar10_ddpm", "celebahq_ddpm", "lsun_church_ddpm", "lsun_bedroom_ddpm", "celebahq_ldm",
              "imagenet256_dit"]


def experiment_file(name) -> dict:
    return yaml.safe_load((CONFIGS / "experiment" / f"{name}.yaml").read_text())


def plans(name, *extra):
    """The experiment's runs as the sweeper builds them (params x runs x setups). Composed once per
    (setup, run) and planned at every NFE of the sweep: composition does not depend on nfe."""
    sweeper = experiment_file(name)["hydra"]["sweeper"]
    params = {k: str(v).split(",") for k, v in (sweeper.get("params") or {}).items()}
    nfes = [int(n) for n in params.pop("nfe")]
    base = [[f"+experiment={name}", *extra, *(f"{k}={v[0]}" for k, v in params.items()), f"nfe={n}"] for n in nfes]
    assert all(len(v) == 1 for v in params.values()), "only nfe is swept besides runs and setups"
    out, cfgs = [], {}
    with initialize_config_dir(str(CONFIGS), version_base=None):
        for job in expand(expand(base, sweeper.get("setups")), sweeper.get("runs")):
            key = tuple(o for o in job if not o.startswith("nfe="))  # a run may be limited to some NFEs
            n = int(next(o for o in job if o.startswith("nfe="))[len("nfe="):])
            if key not in cfgs:
                cfgs[key] = OmegaConf.to_container(compose("config", overrides=list(key)), resolve=True)
            out.append(plan_run({**cfgs[key], "nfe": n}) | {"overrides": list(key), "config": cfgs[key]})
    return out


def test_experiment_files_are_exactly_the_issue_list():
    assert set(experiment_names()) == {"ddim_table1_cifar10", "ddim_table3_church", "ddim_table3_bedroom",
                                       "leaderboard_cpu", *(f"zoo_{m}" for m in ZOO_MODELS), *EDM_REPLAYS}


@pytest.mark.parametrize("name", ["ddim_table1_cifar10", "ddim_table3_church", "ddim_table3_bedroom",
                                  *(f"zoo_{m}" for m in ZOO_MODELS)])
def test_dry_run_plans_exactly_the_published_rows_named(name):
    exp = experiment_file(name)["experiment"]
    planned = plans(name)
    assert planned and all(p["counted"] <= p["nfe"] for p in planned)
    answered = set()
    for spec in exp["published"]:
        collector_published.published_rows(spec["source"], spec["table"], spec["checkpoint"])  # the names exist
        rows = published_rows(spec)
        assert len(rows) > 0
        for row in rows.itertuples():
            solver, opts = PAPER_SOLVERS[row.solver]
            hits = [p for p in planned if p["published_solver"] == row.solver and p["nfe"] == row.nfe]
            assert len(hits) == 1, (row.solver, row.nfe, len(hits))
            p = hits[0]
            assert p["solver"] == solver and {k: p["options"][k] for k in opts} == opts, (row.solver, p["options"])
            # the paper counts S steps: the record's paper count is the row's NFE, and no evaluation is hidden
            assert p["paper"] == {"convention": "steps", "value": row.nfe} and p["counted"] == row.nfe
            if name.startswith("ddim_"):
                assert p["schedule"] == PAPER_GRIDS[row.schedule]
            answered.add((row.solver, row.nfe))
    if name.startswith("ddim_"):
        # a paper-table experiment runs nothing the table does not print
        assert {(p["published_solver"], p["nfe"]) for p in planned} == answered
        assert len(planned) == len(answered)
    else:
        # a zoo: every registered solver at every NFE of the issue, on its own model
        # (but the solvers that need a model method a neural checkpoint lacks, declared as model_needs: dlg)
        runnable = [s for s in SOLVERS if not get_solver(s).model_needs]
        assert {p["solver"] for p in planned} == set(runnable)
        assert {p["nfe"] for p in planned} == {5, 6, 8, 10, 12, 15, 20, 50}
        assert {p["model"] for p in planned} == {name[len("zoo_"):]}
        assert len(planned) == len(runnable) * 8 + 3  # + diffusers' PNDM at the three NFEs >= 13


def test_zoo_solvers_use_diffusers_defaults_where_diffusers_has_the_scheduler():
    presets = set(compose_cfg("protocol=diffusers")["protocol"]["solvers"])
    planned = plans("zoo_cifar10_ddpm")
    for p in planned:
        if p["solver"] == "pndm" and p["schedule"] != "diffusers":
            continue  # nfebench's PLMS runs the whole row; diffusers' PNDM only where it can (below)
        want = "diffusers" if p["solver"] in presets else p["schedule"]
        assert p["schedule"] == want, (p["solver"], p["schedule"])
    # PNDMScheduler() spends N + 9 calls and needs N >= 4: the zoo's NFEs from 13 up
    assert sorted(p["nfe"] for p in planned if p["solver"] == "pndm" and p["schedule"] == "diffusers") == [15, 20, 50]
    assert sorted(p["nfe"] for p in planned if p["solver"] == "pndm" and p["schedule"] != "diffusers") == \
        [5, 6, 8, 10, 12, 15, 20, 50]
    heun = {p["nfe"]: p for p in plans("zoo_cifar10_ddpm") if p["solver"] == "heun"}
    # diffusers' Heun: N inference steps cost 2N-1 evaluations; the record keeps both numbers
    assert (heun[10]["paper"]["value"], heun[10]["counted"]) == (5, 9)


def test_leaderboard_plans_every_solver_and_the_readme_variants_on_three_models():
    planned = plans("leaderboard_cpu")
    assert {p["model"] for p in planned} == {"gaussian", "digits", "digits_unet"}
    assert {p["nfe"] for p in planned} == {3, 4, 5, 6, 8, 10, 15, 20, 50}
    labels = {(p["solver"], tuple(sorted(p["options"].items()))) for p in planned}
    for name in SOLVERS:  # every registered solver with its config's default options
        default = compose_cfg(f"solver={name}")["solver"]
        default.pop("name")
        assert (name, tuple(sorted(default.items()))) in labels, name
    variants = {(p["solver"], p["options"].get("order"), p["options"].get("variant"), p["options"].get("eta"),
                 p["options"].get("final_step")) for p in planned}
    assert ("dpmpp", 3, "reference", None, None) in variants and ("dpmpp", 3, "exact", None, None) in variants
    for variant in ("bh1", "bh2"):
        for order in (2, 3):
            assert ("unipc", order, variant, None, None) in variants
    assert ("ddim", None, None, 1.0, None) in variants and ("heun", None, None, None, "edm") in variants
    by_model, cached = {}, []
    for p in planned:
        (cached if p["config"]["model"].get("deepcache") else by_model.setdefault(p["model"], [])).append(p)
    # the same solver grid on each model, but for solvers that need a model method only the analytic models
    # have (dlg's exact noise-level posterior, declared as model_needs): those run on gaussian and digits only
    needy = {name for name in SOLVERS if get_solver(name).model_needs}
    assert needy == {"dlg"}
    grids = {m: sorted((p["solver"], str(sorted(p["options"].items())), p["nfe"])
                       for p in v if p["solver"] not in needy) for m, v in by_model.items()}
    assert grids["gaussian"] == grids["digits"] == grids["digits_unet"]
    assert {p["model"] for p in planned if p["solver"] in needy} == {"gaussian", "digits"}
    # DeepCache rows (a UNet2DModel option) on digits_unet only, each launched once
    assert cached and {p["model"] for p in cached} == {"digits_unet"}
    assert len({(tuple(p["overrides"]), p["nfe"]) for p in cached}) == len(cached)
    assert all(p["paper"]["convention"] == "nfe" and p["paper"]["value"] == p["counted"] for p in planned)


def test_sweeper_expansion_runs_times_jobs_command_line_wins_and_duplicates_drop():
    runs = [{"published": "DDIM eta=0.0", "overrides": ["solver=ddim", "solver.eta=0.0"]}, ["solver=ddpm"]]
    assert run_overrides(runs[0]) == ["solver=ddim", "solver.eta=0.0", "experiment.published_solver='DDIM eta=0.0'"]
    jobs = expand([["nfe=10"], ["nfe=20"]], runs)
    assert jobs == [["nfe=10", "solver=ddim", "solver.eta=0.0", "experiment.published_solver='DDIM eta=0.0'"],
                    ["nfe=20", "solver=ddim", "solver.eta=0.0", "experiment.published_solver='DDIM eta=0.0'"],
                    ["nfe=10", "solver=ddpm"], ["nfe=20", "solver=ddpm"]]
    # a key given on the command line beats the run's; identical jobs are launched once
    assert expand([["solver=dpmpp"]], [["solver=ddim"], ["solver=unipc"]]) == [["solver=dpmpp"]]
    assert expand([["nfe=5"]], []) == [["nfe=5"]]


def test_cli_dry_run_lists_runs_and_costs_without_loading_weights(tmp_path):
    # the checkpoint is not on this machine (no hub, HF_HUB_OFFLINE): a dry run must not need it
    r = launch("-m", "+experiment=ddim_table3_church", "dry_run=true", f"hydra.sweep.dir={tmp_path / 's'}")
    assert r.returncode == 0, r.stderr
    rows = [ln for ln in r.stdout.splitlines() if re.match(r"\s+\d+\s+lsun_church_ddpm", ln)]
    assert len(rows) == 8
    got = sorted((int(ln.split()[4]), ln.split()[-2] + " " + ln.split()[-1]) for ln in rows)
    assert got == sorted((n, lbl) for n in (10, 20, 50, 100) for lbl in ("DDIM eta=0.0", "DDPM eta=1.0"))
    # network evaluations = counted NFE x samples, summed over the runs
    assert "total: 8 runs, 18,000,000 NFE x samples, 18,000,000 network evaluations" in r.stdout
    assert not list(tmp_path.rglob("record.json"))
    # guidance doubles the network batch: DiT's network evaluations are twice NFE x samples
    r = launch("-m", "+experiment=zoo_imagenet256_dit", "dry_run=true", "nfe=10", "num_samples=100",
               f"hydra.sweep.dir={tmp_path / 'd'}")
    assert r.returncode == 0, r.stderr
    n_runs = len([s for s in SOLVERS if not get_solver(s).model_needs])  # one zoo run per solver at nfe=10
    total = re.search(rf"total: {n_runs} runs, ([\d,]+) NFE x samples, ([\d,]+) network evaluations", r.stdout)
    assert total and 2 * int(total[1].replace(",", "")) == int(total[2].replace(",", ""))


def test_dry_run_of_a_single_run_and_of_a_sweep_with_an_impossible_run(tmp_path):
    r = launch("model=cifar10_ddpm", "solver=heun", "nfe=19", "num_samples=10", "dry_run=true",
               f"hydra.run.dir={tmp_path / 'one'}")
    assert r.returncode == 0, r.stderr
    assert "total: 1 runs, 190 NFE x samples" in r.stdout and not (tmp_path / "one" / "record.json").exists()
    r = launch("-m", "model=gaussian", "solver=score_sde_pc", "nfe=1,4", "num_samples=10", "dry_run=true",
               f"hydra.sweep.dir={tmp_path / 'bad'}")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nfebench: error: 1 of 2 planned runs would fail; first: run #0")


def test_unknown_experiment_is_one_line_listing_the_valid_ones():
    r = launch("-m", "+experiment=ddim_table9", "dry_run=true")
    assert r.returncode == 2 and r.stdout == ""
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nfebench: error: unknown experiment 'ddim_table9'; valid: ")
    assert err[0].split("valid: ")[1].split(", ") == experiment_names()


def test_a_published_name_that_matches_nothing_is_refused():
    from common.errors import NfebenchError

    with pytest.raises(NfebenchError, match="no published row has table 'Table 7'"):
        collector_published.published_rows(DDIM, "Table 7", "DDPM (Ho et al. 2020) CIFAR-10")


# ---- end to end on miniature checkpoints --------------------------------------------------------------

# experiment -> (its checkpoint's model config, whether published_fid.csv has rows for it)
# (a zoo names no row as reproduced, since the CSV's DDIM rows need DDIM's own grid, but the collector still
# sets its diffusers-default DDIM beside the DDIM rows of the same checkpoint, with the differences marked)
E2E = {"ddim_table1_cifar10": ("cifar10_ddpm", True), "ddim_table3_church": ("lsun_church_ddpm", True),
       "ddim_table3_bedroom": ("lsun_bedroom_ddpm", True),
       **{f"zoo_{m}": (m, m in ("cifar10_ddpm", "lsun_church_ddpm", "lsun_bedroom_ddpm")) for m in ZOO_MODELS}}


@pytest.fixture(scope="module")
def miniatures(tmp_path_factory):
    from metrics.features import build_extractor
    from test_models_pretrained import save_checkpoint

    root = tmp_path_factory.mktemp("mini")
    for model in sorted({m for m, _ in E2E.values()}):
        save_checkpoint(model, root)
    dim = build_extractor("tiny").feature_dim
    np.savez(root / "ref.npz", mu=np.zeros(dim), sigma=np.eye(dim))  # the tiny extractor's stand-in statistics
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(E2E))
def test_experiment_runs_end_to_end_on_a_miniature_then_through_the_collector(name, miniatures, tmp_path):
    """The experiment as a user runs it, on a tiny random network saved in its checkpoint's layout, at one NFE
    with two samples and the tiny FID extractor; the 256x256 zoos run two of their solvers (ddim, heun: the
    full list composes and plans in the dry-run test above; here the cost is the network's)."""
    model, has_rows = E2E[name]
    sweep = tmp_path / "sweep"
    narrow = []
    if name.startswith("zoo_") and model != "cifar10_ddpm":
        narrow = ["hydra.sweeper.runs=[['solver=ddim','protocol=diffusers'],['solver=heun','protocol=diffusers']]"]
    r = launch("-m", f"+experiment={name}", f"model.path={miniatures / model}", "num_samples=2", "batch_size=2",
               "nfe=10", "metrics.extractor=tiny", f"metrics.reference={miniatures / 'ref.npz'}",
               f"metrics.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}", *narrow)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    recs = [json.loads(p.read_text()) for p in sweep.rglob("record.json")]
    n_runs = {"ddim_table1_cifar10": 5, "ddim_table3_church": 2, "ddim_table3_bedroom": 2,
              "zoo_cifar10_ddpm": len([s for s in SOLVERS if not get_solver(s).model_needs])}.get(name, 2)
    assert len(recs) == n_runs and f"{n_runs} runs: {n_runs} done" in r.stdout
    for rec in recs:
        assert rec["config"]["experiment"]["name"] == name and rec["model"]["name"] == model
        # both counts are kept: nfebench's counted evaluations and the paper's steps
        assert rec["nfe"]["paper"]["convention"] == "steps" and rec["nfe"]["counted"] <= 10
        assert np.isfinite(rec["metrics"]["fid"])
    heun = [rec for rec in recs if rec["solver"]["name"] == "heun"]
    assert all((h["nfe"]["counted"], h["nfe"]["paper"]["value"]) == (9, 5) for h in heun)
    if name.startswith("ddim_"):
        assert {rec["config"]["experiment"]["published_solver"] for rec in recs} == set(
            experiment_file(name)["hydra"]["sweeper"]["runs"][i]["published"] for i in range(n_runs))
    table, plot = tmp_path / "table.md", tmp_path / "plot.png"
    c = run_module("results.collect", str(sweep), "--compare", "published", "--plot", str(plot), "--out", str(table))
    if has_rows:
        assert c.returncode == 0, c.stderr
        text = table.read_text()
        assert "FID 10" in text and " / " in text  # ours / published (difference) in a cell
        assert plot.stat().st_size > 10_000
    else:  # no published row answered: one line naming the keys tried, no table, no plot
        assert c.returncode == 2 and len(c.stderr.strip().splitlines()) == 1, c.stderr
        assert c.stderr.startswith("nfebench: error: --compare published: no row of published_fid.csv matches")
        assert "tried (dataset, checkpoint, solver, NFE)" in c.stderr and not table.exists() and not plot.exists()


# ---- the EDM and ScoreSDE replays (issue 15) ----------------------------------------------------------

DIFF_SAMPLER = "zju-pi/diff-sampler diff-solvers-main/README.md (EDM fid.py, 50k, AFS off)"
DPMV3 = "DPM-Solver-v3 (Zheng, Lu, Chen, Zhu, NeurIPS 2023) arXiv:2310.13268"

# The reference scripts' settings, written down here from their code (zju-pi/diff-sampler diff-solvers-main
# solvers.py/solver_utils.py and README "General Settings"; thu-ml/DPM-Solver-v3 codebases/{edm,score_sde}/sample.sh
# and samplers): CSV label -> (nfebench solver, its options, nfebench grid). Every grid ends at sigma_min / t_end
# with no final denoising step, except DPM-Solver-v3's Heun at odd NFE (one Euler step to sigma = 0).
DIFF_SAMPLER_SOLVERS = {
    "Euler (DDIM)": ("euler", {}, "karras"),
    # every step corrected, the last one too (N steps = 2N NFE), no step to sigma = 0
    "Heun": ("heun", {"final_euler": False, "final_step": None}, "karras"),
    "iPNDM 4": ("ipndm", {"order": 4}, "karras"),
    # lower_order_final=True: order min(3, steps left) at every NFE
    "DPM-Solver++ 3M": ("dpmpp", {"method": "multistep", "order": 3, "lower_order_final": "always"}, "logsnr"),
    "UniPC 3": ("unipc", {"order": 3, "variant": "bh2", "lower_order_final": "always", "corrector": True}, "logsnr"),
    # order min(max_order, i + 1): warm-up only, no lower-order final steps
    "DEIS tAB3": ("deis", {"order": 3, "basis": "t", "lower_order_final": "never"}, "time_quadratic"),
}
DIFF_SAMPLER_UNANSWERED = {"DPM-Solver-2", "iPNDM_v 4"}
DPMV3_SOLVERS = {
    "DPM-Solver++ 3M": ("dpmpp", {"method": "multistep", "order": 3, "lower_order_final": "always"}, "logsnr"),
    "UniPC 3 (best of bh1/bh2)": ("unipc", {"order": 3, "lower_order_final": "always", "corrector": True}, "logsnr"),
    "Heun (EDM 2nd order)": ("heun", {}, "karras"),  # skip_type=edm in its sample.sh
}
DPMV3_UNANSWERED = {"DPM-Solver-v3 3M", "DEIS (as printed in DEIS paper)"}


def _vp_sigma(t, beta_min, beta_max):
    return float(np.sqrt(np.expm1(0.5 * (beta_max - beta_min) * t ** 2 + beta_min * t)))


def _check_replay_plan(p, row, source):
    table = DIFF_SAMPLER_SOLVERS if source == DIFF_SAMPLER else DPMV3_SOLVERS
    solver, opts, grid = table[row.solver]
    assert p["solver"] == solver and p["schedule"] == grid, (row.solver, row.nfe, p["solver"], p["schedule"])
    assert {k: p["options"][k] for k in opts} == opts, (row.solver, p["options"])
    # both papers count model evaluations: nothing hidden, nothing unspent
    assert p["paper"] == {"convention": "nfe", "value": row.nfe} and p["counted"] == row.nfe
    cfg = p["config"]
    assert not cfg["denoise_to_zero"]
    if row.solver == "Heun (EDM 2nd order)":  # NFE // 2 Heun steps, plus an Euler step to 0 when NFE is odd
        want = {"final_step": "edm"} if row.nfe % 2 else {"final_euler": False, "final_step": None}
        assert {k: p["options"][k] for k in want} == want and p["steps"] == row.nfe // 2  # Heun steps on the grid
    if row.solver == "DEIS tAB3":
        # diff-sampler's time_uniform grid: a VP schedule with sigma(1) = 80, sigma(1e-3) = 0.002, sqrt-uniform t
        ns = cfg["model"]["noise_schedule"]
        assert ns["name"] == "vp_linear" and ns["T"] == 1.0 and ns["eps"] == pytest.approx(1e-3)
        assert _vp_sigma(1.0, ns["beta_min"], ns["beta_max"]) == pytest.approx(80.0, rel=1e-9)
        assert _vp_sigma(1e-3, ns["beta_min"], ns["beta_max"]) == pytest.approx(0.002, rel=1e-9)
        assert cfg["schedule"]["power"] == 2.0
    elif cfg["model"]["family"] == "edm_pickle":
        assert cfg["model"]["noise_schedule"]["name"] == "edm" and cfg["t_end"] is None  # sigma 80 -> 0.002
    if cfg["model"]["name"] == "cifar10_scoresde_vp_deep":
        assert cfg["t_end"] == (1e-3 if row.nfe <= 10 else 1e-4)


@pytest.mark.parametrize("name", EDM_REPLAYS)
def test_edm_and_scoresde_replays_plan_exactly_their_published_rows(name):
    exp = experiment_file(name)["experiment"]
    planned = plans(name)
    (spec,) = exp["published"]
    source = spec["source"]
    named = published_rows(spec)
    everything = published_rows({k: v for k, v in spec.items() if k != "solver"})
    unanswered = DIFF_SAMPLER_UNANSWERED if source == DIFF_SAMPLER else DPMV3_UNANSWERED
    # the rows left out are exactly the ones nfebench has no solver for
    assert set(everything.solver) - set(named.solver) == unanswered & set(everything.solver) != set()
    assert {p["model"] for p in planned} == {"cifar10_edm" if name.startswith("dpmv3") and name.endswith("_edm")
                                            else name.split("_", 1)[1] if name.startswith("diffsampler") else
                                            "cifar10_scoresde_vp_deep"}
    answered = set()
    for row in named.itertuples():
        hits = [p for p in planned if p["published_solver"] == row.solver and p["nfe"] == row.nfe]
        # UniPC's published cell is the better of bh1 and bh2: both run
        assert len(hits) == (2 if "best of bh1/bh2" in row.solver else 1), (row.solver, row.nfe, len(hits))
        if len(hits) == 2:
            assert {h["options"]["variant"] for h in hits} == {"bh1", "bh2"}
        for p in hits:
            _check_replay_plan(p, row, source)
        answered.add((row.solver, row.nfe))
    # nothing the table does not print
    assert {(p["published_solver"], p["nfe"]) for p in planned} == answered
    assert len(planned) == len(named) + sum("best of bh1/bh2" in s for s in named.solver)
    # the collector's map runs each row with the same solver options as the experiment
    with initialize_config_dir(str(CONFIGS), version_base=None):
        for row in named.itertuples():
            entry = collector_published.nfebench_solver(row.solver, row.schedule, row.source, row.nfe)
            assert entry is not None, row.solver
            cfg = OmegaConf.to_container(compose("config", overrides=[f"model={planned[0]['model']}",
                                                                      *entry["overrides"]]), resolve=True)
            p = next(p for p in planned if p["published_solver"] == row.solver and p["nfe"] == row.nfe
                     and p["options"].get("variant") in (None, cfg["solver"].get("variant")))
            assert cfg["solver"] == {"name": p["solver"], **p["options"]}, (row.solver, row.nfe)
            assert cfg["schedule"] == p["config"]["schedule"] and cfg["t_end"] == p["config"]["t_end"]
            assert cfg["model"]["noise_schedule"] == p["config"]["model"]["noise_schedule"]


def test_a_run_limited_to_some_nfes_joins_only_those_jobs():
    runs = [{"published": "Heun", "nfe": [4, 6], "overrides": ["solver=heun"]}, ["solver=euler"]]
    assert expand([["nfe=3"], ["nfe=4"]], runs) == [
        ["nfe=4", "solver=heun", "experiment.published_solver='Heun'"], ["nfe=3", "solver=euler"],
        ["nfe=4", "solver=euler"]]
    # `where` limits a run to the jobs whose setup names one of its models (setups are expanded first)
    runs = [{"where": {"model": ["gaussian"]}, "overrides": ["solver=dlg"]}, ["solver=euler"]]
    setups = [["model=gaussian"], ["model=digits_unet"]]
    assert expand(expand([["nfe=3"]], setups), runs) == [
        ["nfe=3", "model=gaussian", "solver=dlg"], ["nfe=3", "model=gaussian", "solver=euler"],
        ["nfe=3", "model=digits_unet", "solver=euler"]]
    # the published map likewise holds an entry at some NFEs only (DPM-Solver-v3's Heun changes with parity)
    heun = ("Heun (EDM 2nd order)", "logSNR sigma in [0.002,80]", DPMV3)
    assert "solver.final_step=edm" in collector_published.nfebench_solver(*heun, 5)["overrides"]
    assert "solver.final_euler=false" in collector_published.nfebench_solver(*heun, 6)["overrides"]


@pytest.mark.slow
@pytest.mark.parametrize("name, nfe", [("diffsampler_cifar10_edm", 4), ("dpmv3_table1_cifar10_scoresde", 12)])
def test_edm_and_scoresde_replays_run_end_to_end_on_miniatures(name, nfe, tmp_path):
    """The replay as a user runs it, on a miniature of its checkpoint (the model tests' builders), at one NFE
    with two samples and the tiny FID extractor, then through the collector with --compare published."""
    from metrics.features import build_extractor

    if name.startswith("diffsampler"):
        from test_models_edm import miniature

        path, _, _ = miniature("cifar10_edm", tmp_path)
        arch = []
    else:
        from test_models_scoresde import ARCH_OVERRIDES, MINI, write_checkpoint

        path, _, _ = write_checkpoint(tmp_path / "checkpoint_8.pth", fourier=False, residual_input=False, **MINI)
        arch = ARCH_OVERRIDES
    np.savez(tmp_path / "ref.npz", mu=np.zeros(build_extractor("tiny").feature_dim),
             sigma=np.eye(build_extractor("tiny").feature_dim))
    sweep = tmp_path / "sweep"
    r = launch("-m", f"+experiment={name}", f"model.path={path}", *arch, "num_samples=2", "batch_size=2", f"nfe={nfe}",
               "metrics.extractor=tiny", f"metrics.reference={tmp_path / 'ref.npz'}",
               f"metrics.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    recs = [json.loads(p.read_text()) for p in sweep.rglob("record.json")]
    # diff-sampler at NFE 4: all six answered solvers (Heun prints even NFE); DPM-Solver-v3 ScoreSDE at 12: 3M, bh1, bh2
    want = {"diffsampler_cifar10_edm": {"euler", "heun", "ipndm", "dpmpp", "unipc", "deis"},
            "dpmv3_table1_cifar10_scoresde": {"dpmpp", "unipc"}}[name]
    assert {rec["solver"]["name"] for rec in recs} == want and len(recs) == len(want) + name.endswith("scoresde")
    for rec in recs:
        assert rec["config"]["experiment"]["name"] == name
        assert rec["nfe"]["counted"] == nfe and rec["nfe"]["paper"] == {"convention": "nfe", "value": nfe}
        assert np.isfinite(rec["metrics"]["fid"])
    table, plot = tmp_path / "table.md", tmp_path / "plot.png"
    c = run_module("results.collect", str(sweep), "--compare", "published", "--plot", str(plot), "--out", str(table))
    assert c.returncode == 0, c.stderr
    text = table.read_text()
    assert f"FID {nfe}" in text and " / " in text  # ours / published (difference)
    # every solver row of the run carries its published value, none is listed unmatched at this NFE
    cells = [ln for ln in text.splitlines() if ln.startswith("|") and " / " in ln]
    assert len(cells) == (len(want) if name.startswith("diffsampler") else 2), text
    assert plot.stat().st_size > 10_000
