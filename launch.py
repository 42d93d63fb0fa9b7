"""nfebench entry point: `python launch.py solver=dpmpp nfe=10` (add -m for sweeps)."""
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from launch.cli import check_overrides, fail
from hydra_plugins.nfebench_launchers.checks import check_launcher_overrides
from common.errors import NfebenchError


@hydra.main(version_base=None, config_path="configs", config_name="config")
def main(cfg):
    from hydra_plugins.nfebench_launchers.resume import SKIPPED, find_complete, identity
    from launch.tracking import check_mode, log_run

    hc = HydraConfig.get()
    out_dir = hc.runtime.output_dir
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    if cfg_dict.get("dry_run"):  # a single run's plan; sweeps are planned by the sweeper, before any launch
        from launch.dry_run import print_plan

        return print_plan([cfg_dict])
    # identity() drops run-control keys, so the record's config_hash is what find_complete looks for
    if cfg_dict.get("skip_complete") and (done := find_complete(cfg_dict, hc.sweep.dir if hc.mode.name == "MULTIRUN" else out_dir)):
        print(f"skipped (complete record with the same config hash): {done}", flush=True)
        return SKIPPED
    from launch.run import run_experiment, summary_line  # torch: only for runs that really run

    try:
        check_mode(cfg_dict.get("wandb"))
        record = run_experiment(identity(cfg_dict), out_dir)
    except NfebenchError as err:
        if hc.mode.name == "MULTIRUN":
            # into this run's launch.log (the summary points there), then the launcher counts it failed
            logging.getLogger("nfebench").error(f"nfebench: error: {err}")
            raise
        fail(err)
    print(summary_line(record, out_dir), flush=True)
    log_run(record, cfg_dict.get("wandb"), out_dir)  # after the record: tracking never costs a result
    return "done"


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:])
        check_launcher_overrides(sys.argv[1:])
    except NfebenchError as err:
        fail(err)
    main()
