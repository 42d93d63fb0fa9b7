"""Importing this package registers every solver: one module per configs/solver/*.yaml."""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
