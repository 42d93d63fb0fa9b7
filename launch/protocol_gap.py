"""diffusers' defaults vs nfebench's defaults at a fixed NFE, against a many-step reference.

    python -m launch.protocol_gap [--model digits_unet] [--nfe 10] [--ref-steps 500] [--num-samples 500]
                                    [--solvers ddim,dpmpp,euler,heun,unipc,deis]

For each solver with a protocol=diffusers preset, the same samples (seed 0, indices 0..n-1) are drawn
with nfebench's defaults (`solver=S nfe=K`) and with `protocol=diffusers`; each is compared (RMS per
pixel) with DPM-Solver++(2M) at --ref-steps steps on the logsnr grid from the same initial noise, ending
with the x0 prediction at t_end (the same end point as diffusers' final x0 step, within sigma(t_end)).
Prints a markdown table. Runs through launch.run.plan / sample_batches, the path launch.py takes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SOLVERS = ("ddim", "dpmpp", "euler", "heun", "unipc", "deis")


def samples(*overrides):
    from launch.run import load_model, plan, sample_batches

    with initialize_config_dir(str(CONFIGS), version_base=None):
        cfg = OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)
    out = []
    sample_batches(cfg, plan(cfg), load_model(cfg), torch.device("cpu"), lambda x, x0, idx: out.append(x))
    return torch.cat(out), cfg


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="digits_unet")
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--ref-steps", type=int, default=500)
    ap.add_argument("--num-samples", type=int, default=500)
    ap.add_argument("--solvers", default=",".join(SOLVERS))
    a = ap.parse_args(argv)
    common = [f"model={a.model}", f"num_samples={a.num_samples}", "batch_size=500", "metrics=none", "device=cpu"]
    ref, _ = samples(*common, "solver=dpmpp", f"nfe={a.ref_steps + 1}", "denoise_to_zero=true")
    rms = lambda x: float((x - ref).pow(2).mean().sqrt())  # noqa: E731
    print("| solver | nfebench default (grid) | RMS vs ref | protocol=diffusers (grid) | RMS vs ref |")
    print("|---|---|---|---|---|")
    for s in a.solvers.split(","):
        row = [s]
        for extra in ([], ["protocol=diffusers"]):
            try:
                x, cfg = samples(*common, f"solver={s}", f"nfe={a.nfe}", *extra)
                grid = (cfg.get("protocol") or {}).get("schedule") or cfg["schedule"]
                label = grid["name"] + (f" {grid['family']}/{grid['spacing']}/final {grid['final']}" if grid["name"] == "diffusers" else "")
                row += [label, f"{rms(x):.4f}"]
            except Exception as err:  # noqa: BLE001  (a failing protocol is a result here, not a crash)
                row += ["-", f"error: {err}"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
