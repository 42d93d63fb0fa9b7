import os
import sys
from pathlib import Path

# No hub, no wandb network in tests, whatever the caller's environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
