"""nfebench's sweeper: Hydra's basic sweeper plus the `runs:` of an experiment and `dry_run=true`.

A published table mixes solvers whose options differ (DDIM at several eta beside DDPM's
variance), which a cartesian sweep cannot express. An experiment lists them instead:

    hydra:
      sweeper:
        params: {nfe: "10,20,50"}        # swept as by the basic sweeper (the command line wins)
        runs:                            # each entry is one variant: its overrides x every params combination
          - {published: DDIM eta=0.0, overrides: [solver=ddim, solver.eta=0.0]}
          - {overrides: [solver=ddpm, solver.variance=fixed_large]}
          - {published: Heun, nfe: [4, 6], overrides: [solver=heun]}   # only at these NFEs of the sweep
          - {where: {model: [gaussian]}, overrides: [solver=dlg]}        # only on these setups' models
        setups:                          # optional second axis, crossed with runs (e.g. a model with its metrics)
          - [model=gaussian, metrics=exact]

The sweeper only produces override lists, so every launcher (basic, local, slurm) runs them
unchanged. `dry_run=true` prints the plan of every run (launch/dry_run.py) and launches nothing.
"""

from dataclasses import dataclass
from typing import Any, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore

# The run override that carries a published row's solver label into the record (config.experiment).
LABEL_KEY = "experiment.published_solver"


@dataclass
class NfebenchSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.nfebench_launchers.sweeper.NfebenchSweeper"
    runs: Optional[List[Any]] = None
    setups: Optional[List[Any]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="nfebench", node=NfebenchSweeperConf, provider="nfebench")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_overrides(run) -> List[str]:
    """One `runs:` entry (a list of overrides, or {overrides, published}) as override strings."""
    if isinstance(run, str):
        return [run]
    if hasattr(run, "keys"):
        out = [str(o) for o in run.get("overrides") or []]
        if run.get("published") is not None:
            out.append(f"{LABEL_KEY}='{run['published']}'")
        return out
    return [str(o) for o in run]


def _value_of(job: List[str], key: str):
    for o in job:
        if _key(o) == key:
            return o.split("=", 1)[1]
    return None


def _joins(run, job: List[str]) -> bool:
    """Whether a job joins a run: a run with `nfe: [...]` or `where: {key: [values]}` joins only the jobs
    whose value of that key is listed."""
    if not hasattr(run, "keys"):
        return True
    only = dict(run.get("where") or {})
    if run.get("nfe") is not None:
        only["nfe"] = run["nfe"]
    return all(_value_of(job, k) in [str(v) for v in vs] for k, vs in only.items())


def expand(jobs: List[List[str]], runs) -> List[List[str]]:
    """Every job (a params x command-line combination) once per run; a key the job already sets wins
    (the command line beats an experiment), and identical jobs are launched once. A run with `nfe: [...]`
    joins only the jobs at those NFEs (a table that prints a solver at some budgets, or changes its
    options with the budget); one with `where: {model: [...]}` only the jobs on those models (a solver
    that needs what only some models have)."""
    if not runs:
        return jobs
    out, seen = [], set()
    for run in runs:
        extra = run_overrides(run)
        for job in jobs:
            if not _joins(run, job):
                continue
            given = {_key(o) for o in job}
            new = job + [o for o in extra if _key(o) not in given]
            if tuple(new) not in seen:
                seen.add(tuple(new))
                out.append(new)
    return out


class NfebenchSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params=None, runs=None, setups=None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.runs, self.setups = list(runs or []), list(setups or [])

    def split_arguments(self, overrides, max_batch_size):  # BasicSweeper.sweep calls it on self
        # setups first, so that a run's `where` sees each job's model (a job's own keys win either way)
        jobs = expand(expand(BasicSweeper.split_arguments(overrides, None)[0], self.setups), self.runs)
        return list(BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size))

    def validate_batch_is_legal(self, batch) -> None:
        # Composing every job up front costs ~0.1 s a run (the launcher composes each again); only a
        # cluster submission needs the early check. Runs that would fail are also what dry_run=true shows.
        if "slurm" in str(self.config.hydra.launcher.get("_target_", "")):
            super().validate_batch_is_legal(batch)

    def sweep(self, arguments: List[str]) -> Any:
        if not self.config.get("dry_run"):
            return super().sweep(arguments)
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from launch.dry_run import print_plan

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides(self._parse_config() + list(arguments))
        jobs = [job for batch in self.split_arguments(parsed, None) for job in batch]
        print_plan([self.hydra_context.config_loader.load_sweep_config(self.config, job) for job in jobs])
        return []
