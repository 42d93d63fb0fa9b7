"""Reading EDM's published pickles without running the code inside them.

NVlabs' `torch_utils.persistence` pickles each network module as a call
`_reconstruct_persistent_obj(meta)` whose `meta` carries the module's source code, its class
name and its `__dict__` (parameters, buffers, child modules, constructor kwargs). Unpickling
with the original code would `exec` that source. Here a restricted unpickler resolves only a
fixed list of globals: the reconstruct call becomes an inert `Persistent(class_name, state)`
record (the source is never looked at), tensors are rebuilt by torch's own weights-only
loader, and every other global is refused. The record of the `ema` network then builds
nfebench's implementation of the same class from the recorded kwargs, and the recorded
tensors load into it by their original state-dict keys.
"""
from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import NfebenchError

PERSISTENCE_VERSION = 6  # the torch_utils.persistence format EDM's pickles were written with

# Class names a reconstruct call may carry: EDM's networks and layers (built by nfebench), and the
# training-only objects stored beside the network (loss, augmentation), which stay inert records.
NETWORK_CLASSES = {"VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond", "SongUNet", "DhariwalUNet", "UNetBlock",
                   "Linear", "Conv2d", "GroupNorm", "PositionalEmbedding", "FourierEmbedding"}
INERT_CLASSES = {"VPLoss", "VELoss", "EDMLoss", "AugmentPipe"}


@dataclass
class Persistent:
    """What a reconstruct call described: a class name and the object's __dict__ (never executed)."""

    class_name: str
    state: dict


class Container:
    """A plain torch container (ModuleDict) in the pickle: only its __dict__ is kept."""

    def __setstate__(self, state):
        self.state = state


class EasyDict(dict):
    """dnnlib.util.EasyDict's data: a dict."""


def _reconstruct(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise pickle.UnpicklingError("a persistent-object record without a class name")
    name = meta["class_name"]
    if meta.get("version") != PERSISTENCE_VERSION:
        raise pickle.UnpicklingError(f"persistence format version {meta.get('version')} of class {name} "
                                     f"(expected {PERSISTENCE_VERSION})")
    if name not in NETWORK_CLASSES | INERT_CLASSES:
        raise pickle.UnpicklingError(f"unknown persistent class '{name}'")
    return Persistent(name, dict(meta.get("state") or {}))


def _storage_from_bytes(data: bytes):
    # torch pickles a storage as torch.save bytes; the weights-only loader reads them without running code.
    return torch.load(io.BytesIO(data), weights_only=True)


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError("a numpy scalar that is not plain numeric data")
    return np.frombuffer(data, dtype=dtype)[0]


def _latin1(text, encoding="latin1"):
    # protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1')
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError("a _codecs.encode call that is not latin1 bytes")
    return text.encode("latin1")


ALLOWED = {
    ("_codecs", "encode"): _latin1,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("torch.nn.modules.container", "ModuleDict"): Container,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return ALLOWED[(module, name)]

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id (not a plain pickle)")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_dir() -> Path:
    return Path(os.path.expanduser(os.environ.get("NFEBENCH_CKPT_DIR", "~/.cache/nfebench/checkpoints")))


def locate(file: str, url: str | None, path=None) -> Path:
    """model.path if given (a file, or a directory holding `file`), else $NFEBENCH_CKPT_DIR/<file>."""
    if path:
        p = Path(os.path.expanduser(str(path)))
        p = p / file if p.is_dir() else p
        where = "model.path"
    else:
        p, where = checkpoint_dir() / file, "$NFEBENCH_CKPT_DIR"
    if not p.is_file():
        raise NfebenchError(f"checkpoint {file} not found at {p} ({where}): download {url or 'it'} into "
                            f"{checkpoint_dir()} ($NFEBENCH_CKPT_DIR) or pass model.path=/path/to/{file}")
    return p


def read_pickle(path: Path):
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as err:
        raise NfebenchError(f"{path}: not a loadable EDM pickle: {err}") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, OSError) as err:
        raise NfebenchError(f"{path}: corrupt or truncated pickle ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})") from None


def state_dict_of(rec, prefix: str = "", out: dict | None = None, classes: dict | None = None):
    """Flatten a Persistent/Container tree into (state dict, {module path: class name})."""
    out = {} if out is None else out
    classes = {} if classes is None else classes
    state = rec.state if isinstance(rec, (Persistent, Container)) else None
    if not isinstance(state, dict):
        raise NfebenchError(f"module {prefix.rstrip('.') or '<root>'} is a {type(rec).__name__}, not a network module")
    classes[prefix.rstrip(".")] = rec.class_name if isinstance(rec, Persistent) else "ModuleDict"
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for k, v in (state.get(group) or {}).items():
            if v is not None and k not in skip:
                if not isinstance(v, torch.Tensor):
                    raise NfebenchError(f"{prefix}{k} is a {type(v).__name__}, not a tensor")
                out[prefix + k] = v
    for k, child in (state.get("_modules") or {}).items():
        if child is not None:
            state_dict_of(child, f"{prefix}{k}.", out, classes)
    return out, classes


def load_network(path: Path, builders: dict, key: str = "ema"):
    """The `key` network of an EDM pickle as nfebench's module, with its weights."""
    data = read_pickle(path)
    rec = data.get(key) if isinstance(data, dict) else None
    if not isinstance(rec, Persistent):
        raise NfebenchError(f"{path}: not an EDM network pickle (expected a dict with a '{key}' network)")
    if rec.class_name not in builders:
        raise NfebenchError(f"{path}: '{key}' is a {rec.class_name}, not one of {', '.join(sorted(builders))}")
    args, kwargs = rec.state.get("_init_args") or (), dict(rec.state.get("_init_kwargs") or {})
    try:
        net = builders[rec.class_name](*args, **kwargs)
    except (TypeError, ValueError) as err:
        raise NfebenchError(f"{path}: cannot build {rec.class_name} from its recorded kwargs: {err}") from None
    sd, classes = state_dict_of(rec)
    mine = {name: type(m).__name__ for name, m in net.named_modules()}
    wrong = [f"{n} ({classes[n]}, expected {mine.get(n)})" for n in classes if mine.get(n) != classes[n]]
    if wrong:
        raise NfebenchError(f"{path}: module classes differ from {rec.class_name}'s layout: {', '.join(wrong[:3])}")
    missing, unexpected = net.state_dict().keys() - sd.keys(), sd.keys() - net.state_dict().keys()
    if missing or unexpected:
        raise NfebenchError(f"{path}: state dict does not fit {rec.class_name}: missing {sorted(missing)[:3]}, "
                            f"unexpected {sorted(unexpected)[:3]}")
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise NfebenchError(f"{path}: state dict does not fit {rec.class_name}: "
                            f"{' '.join(str(err).split())[:300]}") from None
    return net.eval().requires_grad_(False), kwargs
