"""Which reference statistics a FID suite compares against.

``metrics.reference`` is one of: a dataset name the suite registers (torch-fidelity's
``cifar10-train`` etc. for ``fid_is``, clean-fid's precomputed statistics for ``clean_fid``),
an image folder (statistics cached by fidcache), or an npz with ``mu`` and ``sigma`` (optionally
``features`` for KID / precision-recall). Names are tried first, so a folder that happens to
be called ``cifar10-train`` needs a path with a slash (``./cifar10-train``).
"""
from __future__ import annotations

from pathlib import Path

from common.errors import NfebenchError

from .fidcache import folder_reference, load_npz_reference


def resolve_reference(suite, reference) -> dict:
    names = suite.reference_names()
    if not reference:
        raise NfebenchError(f"metrics={suite.suite_name} needs metrics.reference: an npz with mu and sigma, an image "
                            f"folder{', or one of ' + ', '.join(names) if names else ''}")
    name = str(reference)
    if name in names:
        return {**suite.named_reference(name), "id": f"{suite.suite_name}:{name}"}
    p = Path(name).expanduser()
    if p.is_dir():
        return folder_reference(suite.extractor, p, suite.cache_dir, suite.batch, suite.subset_size)
    if p.is_file():
        return load_npz_reference(p)
    raise NfebenchError(f"FID reference not found: '{name}' is not an npz file, an image folder"
                        f"{', or a dataset name for metrics=' + suite.suite_name + ' (' + ', '.join(names) + ')' if names else ''}")
