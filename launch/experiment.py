"""Replay experiments (configs/experiment/<name>.yaml): their names, the published rows they
answer, and the paper's way of counting cost beside nfebench's counted NFE.

An experiment's `experiment:` block travels in every run's config (and so in its record):

    experiment:
      name: ddim_table1_cifar10
      published: [{source: ..., table: Table 1, checkpoint: ...}]   # rows of results/data/published_fid.csv
      nfe_convention: steps        # how the paper counts cost: nfe | steps (see CONVENTIONS)
      published_solver: null       # set per run by the sweeper: the published `solver` label it answers
"""
from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "experiment"

# The paper's cost of one run from (steps, counted NFE), where steps include a final x0 step (DDIM's
# step to alpha_bar = 1, diffusers' final_sigmas_type "zero"). nfebench always counts every model
# evaluation; a paper that plots "steps" (DDIM's S, diffusers' num_inference_steps) counts Heun's
# 2N-1 evaluations as N and PLMS's N+1 as N.
CONVENTIONS = {
    "nfe": lambda steps, counted: counted,
    "steps": lambda steps, counted: steps,
}


def experiment_names() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def paper_count(cfg: dict, steps: int, counted: int) -> dict:
    """{'convention', 'value'} of the experiment's cost convention, or {} outside an experiment."""
    conv = (cfg.get("experiment") or {}).get("nfe_convention")
    if conv is None:
        return {}
    from common.registry import check_choice

    check_choice("experiment.nfe_convention", conv, CONVENTIONS)
    return {"paper": {"convention": conv, "value": CONVENTIONS[conv](steps, counted)}}


def published_rows(spec: dict):
    """The rows of published_fid.csv one `experiment.published` entry names: source + table +
    checkpoint, optionally narrowed by `solver` (a label or a list) and `nfe` (a list)."""
    from results.published import load_published

    df = load_published()
    df = df[(df.source == spec["source"]) & (df.table == spec["table"]) & (df.checkpoint == spec["checkpoint"])]
    if spec.get("solver") is not None:
        labels = spec["solver"] if isinstance(spec["solver"], (list, tuple)) else [spec["solver"]]
        df = df[df.solver.isin(list(labels))]
    if spec.get("nfe") is not None:
        df = df[df.nfe.isin([int(n) for n in spec["nfe"]])]
    return df
