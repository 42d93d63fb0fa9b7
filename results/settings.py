"""What sets a run apart from its solver's defaults: the row label of a table, the key it is matched on.

A record carries its full resolved config. Its settings are the config values that differ from the
config Hydra composes for the same model, solver and time grid (so a solver's recommended grid and
default options never clutter a label), plus the grid's name when it is not the solver's default.
"""
from __future__ import annotations

import copy
from functools import lru_cache

# Top-level keys that do not change a solver's numbers (or are tabulated elsewhere: model = the
# table, nfe = the column, seed = averaged, metrics = the protocol).
NOT_SETTINGS = {"model", "metrics", "nfe", "seed", "num_samples", "sample_offset", "batch_size", "device",
                "grid_images", "save_samples", "skip_complete", "wandb", "launcher", "hydra", "dry_run", "experiment"}
MISSING = object()


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def compose(overrides: tuple[str, ...]) -> dict | None:
    """The resolved config for these overrides (a fresh copy), or None when this checkout cannot compose them."""
    cfg = _compose(tuple(overrides))
    return None if cfg is None else copy.deepcopy(cfg)


@lru_cache(maxsize=None)
def _compose(overrides: tuple[str, ...]) -> dict | None:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from launch.cli import CONFIGS

    try:
        with initialize_config_dir(str(CONFIGS), version_base=None):
            cfg = hydra_compose("config", overrides=list(overrides))
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException):
        return None


def _first(*candidates: tuple) -> dict | None:
    for overrides in candidates:
        cfg = compose(overrides)
        if cfg is not None:
            return cfg
    return None


def _defaults(model: str, solver: str, schedule: str | None, protocol: str | None) -> tuple[dict, dict]:
    """(flattened default config with this grid and protocol, the solver's own config without them)."""
    m, s = f"model={model}", f"solver={solver}"
    p = (f"protocol={protocol}",) if protocol else ()
    own = _first((m, s), (s,)) or {}
    with_grid = own
    if schedule is not None or protocol:
        g = (f"schedule={schedule}",) if schedule is not None else ()
        with_grid = _first((m, s, *g, *p), (s, *g, *p), (m, s, *g), (s, *g)) or own
    return flatten({k: v for k, v in with_grid.items() if k not in NOT_SETTINGS}), own


def settings(cfg: dict) -> dict:
    """Dotted config keys whose values differ from the defaults; 'schedule' when the grid is not the
    solver's own and 'protocol' when the run used another protocol preset than the default.

    Solver options come first (as 'solver.<option>'), then the protocol and grid, then anything else.
    """
    model, solver = (cfg.get("model") or {}).get("name"), (cfg.get("solver") or {}).get("name")
    schedule = (cfg.get("schedule") or {}).get("name")
    protocol = (cfg.get("protocol") or {}).get("name") if isinstance(cfg.get("protocol"), dict) else None
    base, own = _defaults(model, solver, schedule, protocol)
    flat = flatten({k: v for k, v in cfg.items() if k not in NOT_SETTINGS})
    diff = {k: v for k, v in flat.items()
            if k not in ("solver.name", "schedule.name", "protocol.name") and base.get(k, MISSING) != v}
    if schedule != (own.get("schedule") or {}).get("name"):
        diff["schedule"] = schedule
    if protocol is not None and protocol != (own.get("protocol") or {}).get("name"):
        diff["protocol"] = protocol
    rank = lambda k: (0 if k.startswith("solver.") else 1 if k.startswith("protocol") else  # noqa: E731
                      2 if k.startswith("schedule") else 3, k)
    return {k: diff[k] for k in sorted(diff, key=rank)}


def run_settings(cfg: dict) -> tuple[dict, dict]:
    """(row settings, model settings) of a run. A changed noise schedule re-parametrises the time of the same
    network (diff-sampler's DEIS grid on a VP fit of an EDM model), so it belongs to the row's set-up as
    'model.noise_schedule.<key>', not to the model's identity: the run stays in its checkpoint's table.
    So does model.deepcache.<key>."""
    mdiff, diff = model_settings(cfg["model"]), settings(cfg)
    # DeepCache caches features of the same network while it samples: a row's set-up too
    for k in [k for k in mdiff if k.startswith(("noise_schedule.", "deepcache"))]:
        diff[f"model.{k}"] = mdiff.pop(k)
    return diff, mdiff


def model_settings(model_cfg: dict) -> dict:
    """Dotted keys of the model config that differ from its named config (e.g. a local `path`)."""
    name = model_cfg.get("name")
    base = flatten((compose((f"model={name}",)) or {}).get("model") or {})
    flat = flatten(model_cfg)
    return {k: v for k, v in flat.items() if k != "name" and base.get(k, MISSING) != v}


def fmt(v) -> str:
    """A value as a Hydra override would spell it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return str(v)


def label(name: str, diff: dict) -> str:
    """'ddim(eta=1.0, schedule=time_quadratic)': the name and only what differs from its defaults."""
    parts = [f"{k.removeprefix('solver.')}={fmt(v)}" for k, v in diff.items()]
    return f"{name}({', '.join(parts)})" if parts else name


def solver_part(diff: dict) -> dict:
    return {k: v for k, v in diff.items() if k.startswith("solver.")}


def setup_part(diff: dict) -> dict:
    return {k: v for k, v in diff.items() if not k.startswith("solver.")}
