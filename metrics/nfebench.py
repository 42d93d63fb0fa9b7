"""metrics=fid: nfebench's own FID backend (and Inception Score when the extractor has logits).

Extractors are nfebench's (features.py: the TorchScript ``fid_helper_inception``, ``tiny`` for
tests), the Fréchet distance is frechet.py's float64 eigh form, and KID / precision-recall are
torch-fidelity's functions on the bounded feature subsets (fid.py). It knows no dataset by name:
a reference is an image folder or an npz (references.py).
"""
from __future__ import annotations

import numpy as np
import torch

from .features import build_extractor
from .fid import FIDSuite, package_version
from .frechet import frechet_distance


class NfebenchFID(FIDSuite):
    suite_name = "fid"

    def _build_extractor(self, name, path):
        return build_extractor(name, path)

    def _fid(self, mu, sigma, ref) -> float:
        return frechet_distance(mu, sigma, ref["mu"], ref["sigma"])

    def implementation(self) -> dict:
        return {"name": "nfebench streaming (float64 Chan moments, eigh Frechet)", "version": package_version("nfebench"),
                **self._kid_prc_implementation(),
                "versions": {"torch": torch.__version__, "numpy": np.__version__}}
