import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# No hub, no wandb network in tests, whatever the caller's environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
# Calibrations a test does not direct elsewhere (zoo and leaderboard runs of calibrated solvers) go to a
# fresh directory of this session, never the user's ~/.cache, and never reuse an earlier session's files.
os.environ["NFEBENCH_CALIBRATION_CACHE"] = tempfile.mkdtemp(prefix="nfebench-calibration-")
atexit.register(shutil.rmtree, os.environ["NFEBENCH_CALIBRATION_CACHE"], True)

# The checkout first on sys.path, before anything imports it: so this cannot use common.paths.REPO.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture
def float64_default():
    """torch's default dtype as float64 for one test, restored afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def one_thread():
    """One torch thread: for miniature networks thread hand-offs cost more than their convolutions
    (20x on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
