"""`make bench` / `python -m launch.bench [part ...] [--quick]`: the speed goals of issue 14, measured.

Parts (each writes results/bench/<part>.md and .json with its goals marked met / not met):
- solvers: every solver config's overhead per NFE against an in-place floor and diffusers' loop, and
  the check that the solvers' samples are unchanged (results/bench/solver_outputs.npz)
- fusion:  would fused kernels meet the floor goal? ipndm's steps compiled by torch.compile, vs the floor
- noise:   batch-invariant per-sample noise against one batched randn, and its per-batch set-up
- loop:    the non-model share of a digits_unet run's sampling loop, from its record
- metrics: the metric pipeline's throughput and peak memory, 1k vs 10k samples
- sweep:   a sweep's cost per run, launcher=local against launcher=basic

Never a timed test: tests/test_bench.py checks only the arithmetic and the output check.
"""
PARTS = ("solvers", "fusion", "noise", "loop", "metrics", "sweep")
