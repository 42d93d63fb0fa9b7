"""Structured configs of the launchers, registered as hydra/launcher options nfebench_*."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class BasicConf:
    _target_: str = "hydra_plugins.nfebench_launchers.basic.NfebenchBasicLauncher"


@dataclass
class LocalConf:
    _target_: str = "hydra_plugins.nfebench_launchers.local.NfebenchLocalLauncher"
    # GPU ids to spread runs over, one run per GPU at a time; null: every visible GPU
    gpus: Optional[List[str]] = None
    # parallel runs when there is no GPU (or gpus: [])
    cpu_workers: int = 2
    # torch/OpenMP threads per CPU worker; null: the machine's cores divided among the workers
    threads_per_worker: Optional[int] = None
    # a run still going after this long is killed and reported failed
    timeout_min: float = 24 * 60
    log_dir: str = "${hydra.sweep.dir}/.local"


@dataclass
class SlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.nfebench_launchers.slurm.NfebenchSlurmLauncher"
    # the sweep stops waiting (and cancels what is left) after this long; null: wait for ever
    max_wait_min: Optional[float] = 7 * 24 * 60
    # a task that SLURM no longer lists and accounting does not know, for this long, counts as failed
    lost_after_s: float = 120.0
    poll_s: float = 2.0
    additional_parameters: Dict[str, Any] = field(default_factory=dict)


_store = ConfigStore.instance()
_store.store(group="hydra/launcher", name="nfebench_basic", node=BasicConf, provider="nfebench")
_store.store(group="hydra/launcher", name="nfebench_local", node=LocalConf, provider="nfebench")
_store.store(group="hydra/launcher", name="nfebench_slurm", node=SlurmConf, provider="nfebench")
