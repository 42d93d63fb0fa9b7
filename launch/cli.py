"""Command-line front: one clear line and a non-zero exit for every bad input."""
from __future__ import annotations

import sys
from pathlib import Path

from sampling.errors import NfebenchError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXIT_BAD_INPUT = 2


def config_groups() -> dict[str, list[str]]:
    """Every config group, nested ones as 'model/noise_schedule', with its options."""
    return {str(d.relative_to(CONFIGS)): sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(CONFIGS.rglob("*")) if d.is_dir() and any(d.glob("*.yaml"))}


def check_group_overrides(argv: list[str]) -> None:
    """Reject unknown config-group options before Hydra prints a multi-line report."""
    groups = config_groups()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in groups or value.startswith(("choice(", "range(", "glob(")):
            continue
        for v in value.split(","):
            if v not in groups[key]:
                raise NfebenchError(f"unknown {key} '{v}'; valid: {', '.join(groups[key])}")


def fail(err: Exception) -> None:
    print(f"nfebench: error: {err}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
