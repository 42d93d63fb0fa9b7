"""Model families by name: `model.family` in a configs/model/*.yaml picks a builder here."""
from __future__ import annotations

from common.errors import NfebenchError
from common.registry import Registry
from sampling.schedules import make_noise_schedule

from .deepcache import deepcache_options

FAMILIES = Registry("model family")


@FAMILIES.register("gaussian")
def _gaussian(noise, shape=(3, 8, 8), var_min=1e-2, var_max=1.0, mean_scale=0.5, basis_seed=0, prediction="x0"):
    from .analytic import Gaussian

    return Gaussian(noise, tuple(shape), var_min, var_max, mean_scale, basis_seed, prediction)


@FAMILIES.register("digits")
def _digits(noise, std=0.1, prediction="x0", ode_rtol=1e-8):
    from .analytic import Digits

    return Digits(noise, std, prediction, ode_rtol)


def _lazy(module, fn_name):
    # A checkpoint family's module (and diffusers) is imported only when that family is built
    def build(noise, **cfg):
        from importlib import import_module

        return getattr(import_module(module, __package__), fn_name)(noise, **cfg)

    build.target = (module, fn_name)
    return build


for _family, (_module, _fn) in {"diffusers_unet": (".loaders", "build_unet"), "diffusers_ldm": (".loaders", "build_ldm"),
                                "diffusers_dit": (".loaders", "build_dit"), "edm_pickle": (".edm", "build_edm"),
                                "scoresde": (".scoresde", "build_scoresde")}.items():
    FAMILIES.register(_family, _lazy(_module, _fn))


# Keys of a model config that describe how it is evaluated, not how it is built.
NOT_BUILD_KEYS = ("name", "dtype", "fid_reference", "training", "data")


def build_model(cfg: dict):
    """cfg: the resolved `model` config (family, noise_schedule, family-specific keys)."""
    cfg = dict(cfg)
    family, data = cfg.pop("family", None), cfg.get("data")
    for key in NOT_BUILD_KEYS:
        cfg.pop(key, None)
    builder = FAMILIES.get(family)
    deepcache = deepcache_options(cfg.pop("deepcache", None), family)  # checked before anything loads
    noise = make_noise_schedule(**dict(cfg.pop("noise_schedule")))
    try:
        model = builder(noise, **cfg)
    except TypeError as e:
        raise NfebenchError(f"bad options for model family '{family}': {e}") from None
    if deepcache:
        model.use_deepcache(deepcache)
    if data:  # the data a trained network learned (a name or a path): calibrations such as DPM-Solver-v3's EMS
        model.data = data
    return model
