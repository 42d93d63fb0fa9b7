"""Optional experiment tracking: each run's config and metrics to wandb (wandb.mode, default disabled).

Called after the record is on disk, so tracking can never cost a record; `disabled` never
imports wandb, `offline` writes a local run under <run dir>/wandb/ and needs no network
(`wandb sync` uploads it later).
"""
from __future__ import annotations

import os
from pathlib import Path

from common.registry import check_choice

MODES = ("disabled", "offline", "online")


def check_mode(wandb_cfg: dict | None) -> str:
    mode = (wandb_cfg or {}).get("mode", "disabled")
    return check_choice("wandb.mode", mode, MODES)


def run_name(record: dict) -> str:
    return f"{record['model']['name']}-{record['solver']['name']}-nfe{record['nfe']['requested']}-{record['config_hash']}"


def log_run(record: dict, wandb_cfg: dict | None, out_dir) -> str | None:
    """Log one finished run; returns the local wandb run dir, or None when disabled."""
    if check_mode(wandb_cfg) == "disabled":
        return None
    import wandb

    cfg = wandb_cfg or {}
    # the config key is the user's explicit choice; WANDB_MODE (set by the Makefile/tests) is a default
    os.environ["WANDB_MODE"] = cfg["mode"]
    run = wandb.init(mode=cfg["mode"], project=cfg.get("project") or "nfebench", entity=cfg.get("entity"),
                     group=cfg.get("group"), dir=str(out_dir), name=run_name(record), config=record["config"],
                     tags=[record["solver"]["name"], record["model"]["name"]], reinit="create_new")
    try:
        run.summary.update({**record["metrics"], "nfe_counted": record["nfe"]["counted"],
                            "config_hash": record["config_hash"], "total_s": record["timing"]["total_s"]})
        run.log({**record["metrics"], "nfe": record["nfe"]["requested"]})
        return str(Path(run.dir).parent)
    finally:
        run.finish()
