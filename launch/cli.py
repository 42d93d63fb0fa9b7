"""Command-line front: one clear line and a non-zero exit for every bad input."""
from __future__ import annotations

import sys
from pathlib import Path

from common.errors import NfebenchError
from common.registry import check_choice

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXIT_BAD_INPUT = 2


def config_groups() -> dict[str, list[str]]:
    """Every config group, nested ones as 'model/noise_schedule', with its options."""
    return {str(d.relative_to(CONFIGS)): sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(CONFIGS.rglob("*")) if d.is_dir() and any(d.glob("*.yaml"))}


# Hydra flags that take a value in the next argument (that value is not an override).
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                    "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}


def overrides_only(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            if "=" not in a:
                continue
        if a.startswith("-"):
            skip = a in FLAGS_WITH_VALUE
            continue
        out.append(a)
    return out


def _one_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return " ".join(lines[:2])


def check_overrides(argv: list[str]) -> None:
    """Reject bad overrides before Hydra prints a multi-line report.

    Unknown group options get the list of valid ones; anything else Hydra would refuse (an
    unknown key, a malformed value) is found by composing the config once, with the first
    value of every sweep.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides_only(argv))
    except HydraException as err:
        raise NfebenchError(f"cannot parse overrides: {_one_line(err)}") from None
    groups = config_groups()
    single = []
    for o in parsed:
        if o.key_or_group.startswith("hydra"):
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else None
        if o.key_or_group in groups:
            for v in values or [o.get_value_element_as_str()]:
                check_choice(o.key_or_group, v, groups[o.key_or_group])
        if values:
            prefix = o.input_line[: o.input_line.index(o.key_or_group)]
            single.append(f"{prefix}{o.key_or_group}={values[0]}")
        else:
            single.append(o.input_line)
    try:
        with initialize_config_dir(str(CONFIGS), version_base=None):
            known = set(compose("config").keys())
            compose("config", overrides=single)
    except (HydraException, OmegaConfBaseException) as err:
        raise NfebenchError(_one_line(err)) from None
    # `+foo=1` adds a key nothing reads, yet it would change the run's config hash. The known keys
    # are those of configs/config.yaml as composed, so a key added there is accepted at once.
    for o in parsed:
        top = o.key_or_group.split(".")[0].split("@")[0]
        if not o.key_or_group.startswith("hydra") and top not in known and o.key_or_group not in groups:
            raise NfebenchError(f"unknown config key '{o.key_or_group}' (from '{o.input_line}'); "
                                f"top-level keys: {', '.join(sorted(known))}")


def report(err: Exception) -> int:
    """The one-line error every nfebench command prints; returns the exit status for bad input."""
    print(f"nfebench: error: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT


def fail(err: Exception) -> None:
    sys.exit(report(err))
