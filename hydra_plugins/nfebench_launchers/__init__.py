"""nfebench's Hydra launchers (`launcher=basic|local|slurm`), each ending a sweep with a summary.

sweeper.py expands an experiment's `runs:`; basic.py, local.py (+ worker.py) and slurm.py run the
jobs; resume.py is skip-complete (a run is its config hash; the launchers and launch.py's task
skip runs whose record exists); summary.py prints the sweep's last lines; checks.py holds the
command-line checks launch.py runs before anything is submitted.

Hydra discovers this package through the `hydra_plugins` namespace and imports every module in
it on each start, so nothing here imports torch, submitit or wandb at module level.
"""
