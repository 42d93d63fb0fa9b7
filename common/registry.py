"""Name -> entry tables for the config groups, and the one-line error for a bad choice.

A config group maps 1:1 to a Registry (configs/solver/<name>.yaml -> SOLVERS.get(name)), so
"what does this name run?" is answered by the module that registered it, never by an if-chain.
"""
from __future__ import annotations

from typing import Callable, Iterable

from .errors import NfebenchError


def check_choice(what: str, value, valid: Iterable):
    """``value`` if it is one of ``valid``, else the one-line "unknown <what> '<value>'; valid: …"."""
    valid = list(valid)
    if value not in valid:
        raise NfebenchError(f"unknown {what} {value!r}; valid: {', '.join(map(str, valid))}")
    return value


class Registry:
    """Entries by name. ``load`` imports the modules whose decorators fill the table, on first use,
    so a registry can be read without importing every backend at import time."""

    def __init__(self, what: str, load: Callable[[], object] | None = None):
        self.what = what
        self._entries: dict = {}
        self._load = load

    def register(self, name: str, entry=None):
        """``REG.register("x", obj)``, or ``@REG.register("x")`` above a function or class."""
        if entry is not None:
            self._entries[name] = entry
            return entry

        def wrap(obj):
            self._entries[name] = obj
            return obj

        return wrap

    def _loaded(self) -> dict:
        if self._load is not None:
            load, self._load = self._load, None
            load()
        return self._entries

    def get(self, name):
        return self._loaded()[check_choice(self.what, name, self.names())]

    def names(self) -> list[str]:
        return sorted(self._loaded())

    def __contains__(self, name) -> bool:
        return name in self._loaded()

    def __iter__(self):
        return iter(self.names())

    def items(self):
        return [(n, self._loaded()[n]) for n in self.names()]
