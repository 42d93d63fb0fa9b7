"""How far analytical teleportation lands from the true probability-flow ODE on `digits`, and what it buys.

    python -m launch.teleport_error [--num-samples 200] [--ranks full,8] [--sigmas 80,40,20,10,5,2,1,0.5]
                                    [--nfe 10] [--skips 0.2,0.4,0.6]

Table 1: RMS per pixel, in EDM coordinates (x_t / alpha_t), between the teleported state and the exact
PF-ODE solution of the digits mixture (scipy DOP853 at rtol 1e-8, chained from sigma_T down the list) at each
hand-over sigma, from the same initial noise (seed 0, indices 0..n-1); also as a fraction of sigma.
Table 2: the whole run: `solver=dpmpp nfe=N` with teleport.skip=f (which spends fewer NFE) against plain
dpmpp at N and at the NFE the teleported run spends; RMS per pixel to the exact ODE solution at t_end.
Both go through launch.run (plan / calibration / sample_batches), the path launch.py takes.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config(*overrides) -> dict:
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


def _rank_label(rank, residual):
    return "full" if rank is None else f"{rank} ({residual} rest)"


def handover_table(model, cfg, n, ranks, sigmas) -> list[str]:
    from sampling import teleport
    from sampling.seeds import SampleNoise

    noise, T = model.noise, float(model.noise.T)
    x_T = float(noise.sigma(T)) * SampleNoise(0, range(n), model.shape, dtype=torch.float64).draw()
    lines = ["| hand-over sigma | " + " | ".join(f"rank {_rank_label(*r)}: RMS (RMS / sigma)" for r in ranks) + " |",
             "|---:|" + "---:|" * len(ranks)]
    stats = [teleport.stats_need({"rank": k, "residual": res}, cfg["model"]).compute(model, "cpu") for k, res in ranks]
    x, t_prev = x_T, T
    for s in sorted(sigmas, reverse=True):
        t = float(noise.t_of_edm_sigma(s))
        x = model.ode_solution(x, t_prev, t)  # chained: each solve starts where the last one ended
        t_prev, a = t, float(noise.alpha(t))
        cells = []
        for st in stats:
            err = float(((teleport.teleport(x_T, T, t, noise, st) - x) / a).pow(2).mean().sqrt())
            cells.append(f"{err:.3g} ({err / s:.2g})")
        lines.append(f"| {s:g} | " + " | ".join(cells) + " |")
    return lines


def run_rmse(overrides, cal_dir) -> tuple[float, int]:
    """(RMS per pixel to the exact ODE solution at t_end, counted NFE) of one run."""
    from launch import calibration
    from launch.run import load_model, plan, sample_batches

    cfg = config(*overrides, f"calibration.dir={cal_dir}")
    p, model = plan(cfg), load_model(cfg)
    calibrated, _ = calibration.prepare(cfg, p, model, "cpu")
    out = []
    stats = sample_batches(cfg, p, model, torch.device("cpu"), lambda x, x0, idx: out.append((x, x0)), calibrated)
    x, x0 = (torch.cat(v) for v in zip(*out))
    ref = model.ode_solution(x0, p.t_start, float(p.ts[-1]))
    return float((x - ref).pow(2).mean().sqrt()), stats.counted


def run_table(n, nfe, skips, ranks, cal_dir) -> list[str]:
    common = ["model=digits", "solver=dpmpp", f"num_samples={n}", f"batch_size={n}", "metrics=none"]
    lines = ["| run | NFE spent | RMS to the exact ODE solution |", "|---|---:|---:|"]
    rms, counted = run_rmse([*common, f"nfe={nfe}"], cal_dir)
    lines.append(f"| dpmpp nfe={nfe} | {counted} | {rms:.4f} |")
    for f in skips:
        for k, res in ranks:
            rank = [f"teleport.rank={k}", f"teleport.residual={res}"] if k else []
            rms, counted = run_rmse([*common, f"nfe={nfe}", f"teleport.skip={f}", *rank], cal_dir)
            lines.append(f"| dpmpp nfe={nfe} teleport.skip={f} rank {_rank_label(k, res)} | {counted} | {rms:.4f} |")
        plain, _ = run_rmse([*common, f"nfe={counted}"], cal_dir)
        lines.append(f"| dpmpp nfe={counted} (no teleport) | {counted} | {plain:.4f} |")
    return lines


def _ranks(text):
    out = []
    for r in text.split(","):
        k, _, res = r.partition(":")
        out.append((None if k == "full" else int(k), res or "mean"))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-samples", type=int, default=200)
    ap.add_argument("--ranks", default="full,8,8:zero", help="full, k (mean rest) or k:zero (the reference's form)")
    ap.add_argument("--sigmas", default="80,40,20,10,5,2,1,0.5")
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--skips", default="0.2,0.4,0.6")
    a = ap.parse_args(argv)
    from launch.run import load_model

    torch.set_num_threads(1)
    ranks = _ranks(a.ranks)
    cfg = config("model=digits")
    model = load_model(cfg)
    print("\n".join(handover_table(model, cfg, a.num_samples, ranks, [float(s) for s in a.sigmas.split(",")])),
          flush=True)
    print()
    with tempfile.TemporaryDirectory() as cal_dir:
        print("\n".join(run_table(a.num_samples, a.nfe, [float(s) for s in a.skips.split(",")], ranks, cal_dir)))


if __name__ == "__main__":
    main()
