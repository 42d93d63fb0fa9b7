"""nfebench's Hydra launchers (`launcher=basic|local|slurm`), each ending a sweep with a summary.

Hydra discovers this package through the `hydra_plugins` namespace and imports every module in
it on each start, so nothing here imports torch, submitit or wandb at module level.
"""
