"""Finding and loading diffusers checkpoints: a local directory or a Hugging Face repo id.

The hub's own client retries for ~20 s when there is no network, and its errors run to many
lines. So availability is decided here first, in well under a second: a local `path` must hold
the component's config.json; a repo id must be in the local HF cache, or else the hub must be
reachable (not HF_HUB_OFFLINE, and a TCP connection to the endpoint opens within a second).
Every failure is one NfebenchError line naming what is missing and where to put it.
diffusers and huggingface_hub are imported only here, and only when a pretrained model is built.
"""
from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from common.errors import NfebenchError

TRUE = {"1", "true", "yes", "on"}
PROBE_TIMEOUT_S = 0.8


@dataclass(frozen=True)
class Source:
    """Where a checkpoint comes from: exactly one of repo_id / path."""

    repo_id: str | None = None
    path: str | None = None
    revision: str | None = None
    cache_dir: str | None = None

    def describe(self) -> dict:
        return {"loaded_from": "path" if self.path else "hub", "repo_id": self.repo_id, "path": self.path,
                "revision": self.revision}

    def label(self, subfolder: str | None) -> str:
        where = self.path if self.path else f"{self.repo_id}@{self.revision or 'main'}"
        return f"{where}/{subfolder}" if subfolder else where


def make_source(repo_id=None, path=None, revision=None, cache_dir=None) -> Source:
    if not repo_id and not path:
        raise NfebenchError("a pretrained model needs model.repo_id or model.path (a local diffusers directory)")
    if path:
        path = str(Path(os.path.expanduser(str(path))).resolve())
    return Source(repo_id=repo_id or None, path=path, revision=revision, cache_dir=cache_dir)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE


def hub_cache_dir(source: Source) -> str:
    if source.cache_dir:
        return str(Path(os.path.expanduser(str(source.cache_dir))))
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A TCP connection to the hub endpoint within `timeout` (DNS included, hence the thread)."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    ok = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    th.join(timeout)
    return bool(ok)


WEIGHTS_STEM = "diffusion_pytorch_model"  # diffusers' weights: .safetensors, .bin, sharded or per-variant


def _rel(subfolder: str | None, name: str) -> str:
    return f"{subfolder}/{name}" if subfolder else name


def _cached(source: Source, subfolder: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(source.repo_id, _rel(subfolder, "config.json"), cache_dir=hub_cache_dir(source),
                                 revision=source.revision)
    return isinstance(hit, str)


def locate(source: Source, subfolder: str | None) -> dict:
    """from_pretrained arguments for one component, or one clear error if it cannot be had."""
    if source.path:
        cfg = Path(source.path) / _rel(subfolder, "config.json")
        if not cfg.is_file():
            raise NfebenchError(f"model.path: {cfg} not found; model.path must be a diffusers directory"
                                f"{' with a ' + subfolder + '/ subfolder' if subfolder else ''} (config.json + weights)")
        if not any(cfg.parent.glob(f"{WEIGHTS_STEM}*")):
            raise NfebenchError(f"model.path: {cfg.parent} has config.json but no weights file; put "
                                f"{WEIGHTS_STEM}.safetensors (or .bin) next to it")
        return {"pretrained_model_name_or_path": source.path, "subfolder": subfolder}
    args = {"pretrained_model_name_or_path": source.repo_id, "subfolder": subfolder, "revision": source.revision,
            "cache_dir": hub_cache_dir(source)}
    if _cached(source, subfolder):
        return {**args, "local_files_only": True}
    why = "HF_HUB_OFFLINE is set" if hub_offline() else None
    if why is None and not hub_reachable():
        why = "the hub is unreachable"
    if why:
        raise NfebenchError(f"{source.label(subfolder)} is not in the Hugging Face cache {hub_cache_dir(source)} and "
                            f"{why}: fetch it into that cache where the hub is reachable (hf download "
                            f"{source.repo_id}; model.cache_dir picks another cache), or set model.path to a local "
                            f"diffusers directory")
    return args


def snapshot_commit(source: Source, subfolder: str | None) -> str | None:
    """The hub commit a cached component was loaded from (recorded, so `revision: main` stays traceable)."""
    if source.path:
        return None
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(source.repo_id, _rel(subfolder, "config.json"), cache_dir=hub_cache_dir(source),
                                 revision=source.revision)
    parts = Path(hit).parts if isinstance(hit, str) else ()
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def load_component(cls_name: str, source: Source, subfolder: str | None = None, torch_dtype=None):
    """diffusers.<cls_name>.from_pretrained with availability checked first and errors in one line."""
    args = locate(source, subfolder)  # before importing diffusers (~1 s): a missing checkpoint fails at once
    import diffusers

    cls = getattr(diffusers, cls_name)
    try:
        # low_cpu_mem_usage=False: the plain path, which needs no `accelerate` (and says nothing about it).
        return cls.from_pretrained(**args, torch_dtype=torch_dtype, low_cpu_mem_usage=False)
    except NfebenchError:
        raise
    except Exception as err:  # noqa: BLE001 - every loader failure becomes one line naming the file
        raise NfebenchError(f"cannot load {cls_name} from {source.label(subfolder)}: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."
