"""Launcher checks that must fail before anything is submitted (one line each); launch.py runs them
on the command line before Hydra starts."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from common.errors import NfebenchError
from launch.cli import CONFIGS, overrides_only


def _overrides(argv: list[str]) -> dict[str, str]:
    return dict(a.lstrip("+~").split("=", 1) for a in overrides_only(argv) if "=" in a)


def slurm_partition(argv: list[str]) -> str | None:
    """The partition a `launcher=slurm` run will submit to, or None for other launchers."""
    ov = _overrides(argv)
    if ov.get("launcher") != "slurm":
        return None
    if "hydra.launcher.partition" in ov:
        return ov["hydra.launcher.partition"]
    return yaml.safe_load((CONFIGS / "launcher" / "slurm.yaml").read_text())["hydra"]["launcher"]["partition"]


def check_partition(name: str) -> None:
    if shutil.which("sinfo") is None:
        raise NfebenchError("launcher=slurm needs SLURM's sinfo on PATH (start a cluster: launch/slurm_cluster.sh start)")
    out = subprocess.run(["sinfo", "-h", "-p", name, "-o", "%P"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise NfebenchError(f"cannot reach the SLURM controller: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'sinfo failed'}")
    if not out.stdout.strip():
        raise NfebenchError(f"SLURM partition '{name}' does not exist (see `sinfo`); set hydra.launcher.partition=...")


def check_sweep_dir(argv: list[str]) -> None:
    """The sweep dir (with -m) or run dir given on the command line must be creatable and writable
    (tried, not guessed: root passes every os.access check, even on /proc)."""
    multirun = bool({"-m", "--multirun"} & set(argv))
    key, what = ("hydra.sweep.dir", "sweep dir") if multirun else ("hydra.run.dir", "run dir")
    d = _overrides(argv).get(key)
    if d is None or "${" in d:
        return
    try:
        Path(d).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError as err:
        raise NfebenchError(f"{what} '{d}' is not writable: {err.strerror}") from None


# launcher=local options: name -> (smallest value, may be null)
LOCAL_OPTIONS = {"cpu_workers": (1, False), "threads_per_worker": (1, True), "timeout_min": (1e-9, False)}


def check_local_options(argv: list[str]) -> None:
    ov = _overrides(argv)
    if ov.get("launcher") != "local":
        return
    for name, (lo, nullable) in LOCAL_OPTIONS.items():
        raw = ov.get(f"hydra.launcher.{name}")
        if raw is None or (nullable and raw == "null"):
            continue
        try:
            v = yaml.safe_load(raw)
        except yaml.YAMLError:
            v = raw
        integer = name != "timeout_min"
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or v < lo:
            kind = "an integer >= 1" if integer else "a number > 0"
            raise NfebenchError(f"hydra.launcher.{name} must be {kind}{' or null' if nullable else ''}; got {raw}")


def check_launcher_overrides(argv: list[str]) -> None:
    from launch.tracking import check_mode

    check_mode({"mode": _overrides(argv).get("wandb.mode", "disabled")})
    check_sweep_dir(argv)
    check_local_options(argv)
    if (part := slurm_partition(argv)) is not None:
        check_partition(part)
