"""nfebench entry point: `python launch.py solver=dpmpp nfe=10` (add -m for sweeps)."""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from launch.cli import check_overrides, fail
from sampling.errors import NfebenchError


@hydra.main(version_base=None, config_path="configs", config_name="config")
def main(cfg):
    from launch.run import run_experiment, summary_line

    out_dir = HydraConfig.get().runtime.output_dir
    try:
        record = run_experiment(OmegaConf.to_container(cfg, resolve=True), out_dir)
    except NfebenchError as err:
        fail(err)
    print(summary_line(record, out_dir), flush=True)


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:])
    except NfebenchError as err:
        fail(err)
    main()
