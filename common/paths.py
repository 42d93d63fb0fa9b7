"""Where the checkout is: configs, committed weights and results are found relative to it."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
