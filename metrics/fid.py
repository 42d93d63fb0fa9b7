"""The streaming FID suite that every FID backend shares: one pass over the samples, nothing kept per image.

Per batch: clamp to [-1, 1], optionally quantise to 8 bits (as if saved as PNG, the usual
protocol), extract features and fold them into a FeatureStream (streaming.py): float64 moments,
Inception-Score sums when the extractor has logits, and, for KID / precision-recall (options
``kid``, ``prc``), a bounded feature subset. ``result()`` compares them with the reference
statistics that references.py finds.

A backend (nfebench.py, torch_fidelity.py, clean_fid.py) subclasses FIDSuite and fills its hooks:
``_build_extractor`` (images in [-1, 1] -> (features, logits)), ``reference_names`` /
``named_reference`` (the datasets it knows by name), ``_fid`` (Fréchet distance of two moment
pairs), ``_kid`` / ``_prc`` (torch-fidelity's functions unless the backend has its own) and
``implementation``.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from common.errors import NfebenchError

from .features import check_images, to_uint8
from .references import resolve_reference
from .streaming import FeatureStream, inception_score


def package_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


class FIDSuite:
    suite_name: str
    quantize_fixed: bool | None = None   # backends that only take uint8 images quantise always

    def __init__(self, model, t_start, t_end, extractor="fid_helper_inception", extractor_path=None,
                 reference=None, cache_dir=None, extract_batch=50, quantize=True, inception_score=True,
                 kid=False, prc=False, feature_subset=10000, kid_subsets=100, kid_subset_size=1000,
                 prc_neighborhood=3, protocol_num_samples=None, **backend):
        self.backend = self._backend_options(**backend)
        self.cache_dir, self.batch = cache_dir, int(extract_batch)
        self.quantize = bool(quantize) if self.quantize_fixed is None else self.quantize_fixed
        self.kid, self.prc = bool(kid), bool(prc)
        self.kid_opts = {"kid_subsets": int(kid_subsets), "kid_subset_size": int(kid_subset_size)}
        self.prc_neighborhood = int(prc_neighborhood)
        self.subset_size = int(feature_subset) if (self.kid or self.prc) else 0
        if (self.kid or self.prc) and self.subset_size < 2:
            raise NfebenchError(f"metrics.feature_subset must be >= 2 for KID / precision-recall; got {feature_subset}")
        self.protocol_num_samples = protocol_num_samples
        self.extractor = self._build_extractor(extractor, extractor_path)
        self.ref = self._load_reference(reference)
        self.with_is = bool(inception_score) and self.extractor.num_classes > 0
        self.stream = FeatureStream(self.extractor.feature_dim, self.extractor.num_classes, self.subset_size)
        self.seconds = 0.0
        self._next_index = 0

    # ---- hooks -------------------------------------------------------------------------
    def _backend_options(self, **backend) -> dict:
        if backend:
            raise NfebenchError(f"unknown option(s) for metrics={self.suite_name}: {', '.join(sorted(backend))}")
        return {}

    def _build_extractor(self, name, path):
        raise NotImplementedError

    def reference_names(self) -> list:
        return []

    def named_reference(self, name) -> dict:
        raise NotImplementedError

    def _fid(self, mu, sigma, ref) -> float:
        raise NotImplementedError

    def _kid(self, gen, ref) -> dict:
        from torch_fidelity.metric_kid import kid_features_to_metric

        out = kid_features_to_metric(torch.from_numpy(gen), torch.from_numpy(ref), verbose=False, rng_seed=2020,
                                     **self.kid_opts)
        return {"kid_mean": out["kernel_inception_distance_mean"], "kid_std": out["kernel_inception_distance_std"]}

    def _prc(self, gen, ref) -> dict:
        from torch_fidelity.metric_prc import prc_features_to_metric

        out = prc_features_to_metric(torch.from_numpy(gen), torch.from_numpy(ref), prc_neighborhood=self.prc_neighborhood,
                                     prc_batch_size=1000, save_cpu_ram=True, verbose=False)
        return {"precision": out["precision"], "recall": out["recall"], "f_score": out["f_score"]}

    def implementation(self) -> dict:
        raise NotImplementedError

    def _kid_prc_implementation(self) -> dict:
        return {"kid_prc": f"torch-fidelity {package_version('torch-fidelity')}"} if (self.kid or self.prc) else {}

    # ---- one pass over the samples ---------------------------------------------------------
    def _load_reference(self, reference) -> dict:
        ref = resolve_reference(self, reference)
        if ref["mu"].shape != (self.extractor.feature_dim,):
            raise NfebenchError(f"FID reference {reference} has {ref['mu'].shape[0]}-d statistics but extractor "
                                f"'{self.extractor.name}' gives {self.extractor.feature_dim}-d features")
        if self.subset_size and "subset_feats" not in ref:
            raise NfebenchError(f"KID / precision-recall need reference features, and {reference} has only mu and "
                                "sigma: use an image folder or dataset name, or an npz with a 'features' array")
        return ref

    def _images(self, x):
        x = x.detach().clamp(-1, 1)
        if self.quantize:
            x = to_uint8(x).to(x.dtype) / 127.5 - 1
        return x

    def update(self, samples, x_start=None, indices=None):
        """indices: the global sample indices of this batch (needed for shard-exact feature subsets)."""
        t0 = time.perf_counter()
        check_images(samples)
        if indices is None:
            indices = range(self._next_index, self._next_index + len(samples))
        indices = np.asarray(list(indices), np.int64)
        if len(indices) != len(samples):
            raise NfebenchError(f"{len(samples)} samples but {len(indices)} sample indices")
        self._next_index = int(indices.max()) + 1 if len(indices) else self._next_index
        x = self._images(samples)
        for i in range(0, len(x), self.batch):
            feats, logits = self.extractor(x[i:i + self.batch])
            self.stream.update(indices[i:i + self.batch], feats, logits if self.with_is else None)
        self.seconds += time.perf_counter() - t0

    def state(self) -> dict:
        return {**self.stream.state(), "feature_s": np.asarray(self.seconds)}

    def merge_state(self, state: dict) -> None:
        self.stream.merge_state(state)
        self.seconds += float(state["feature_s"])

    def result(self) -> dict:
        moments, subset = self.stream.moments, self.stream.subset
        if moments.n < 2:
            raise NfebenchError(f"FID needs at least 2 samples, got {moments.n}")
        out = {"fid": float(self._fid(moments.mean, moments.cov(), self.ref))}
        if self.with_is:
            out["inception_score"] = inception_score(moments.n, self.stream.inception.p_sum,
                                                     self.stream.inception.plogp_sum)
        gen, ref = (subset.feats, self.ref["subset_feats"]) if subset is not None else (None, None)
        if self.kid:
            need = self.kid_opts["kid_subset_size"]
            if min(len(gen), len(ref)) < need:
                raise NfebenchError(f"KID needs kid_subset_size={need} features on each side; have {len(gen)} "
                                    f"generated and {len(ref)} reference: lower metrics.kid_subset_size")
            out.update(self._kid(gen, ref))
        if self.prc:
            if min(len(gen), len(ref)) <= self.prc_neighborhood:
                raise NfebenchError(f"precision/recall needs more than prc_neighborhood={self.prc_neighborhood} "
                                    f"features on each side; have {len(gen)} and {len(ref)}")
            out.update(self._prc(gen, ref))
        return out

    def protocol(self) -> dict:
        ref = {k: v for k, v in self.ref.items() if k not in ("mu", "sigma") and not k.startswith("subset_")}
        subset = self.stream.subset
        return {
            "suite": self.suite_name,
            "implementation": self.implementation(),
            "extractor": self.extractor.describe(),
            "resize_mode": self.extractor.resize_mode,
            "reference": {**ref, "n": None if ref.get("n") is None else int(ref["n"]),
                          "features_kept": len(self.ref["subset_feats"]) if self.subset_size else None},
            "preprocess": "clamp [-1, 1]" + (", quantise to uint8 levels" if self.quantize else ""),
            "num_samples": int(self.stream.moments.n),
            "protocol_num_samples": self.protocol_num_samples,
            "inception_score": "single split over all samples" if self.with_is else None,
            "kid": {**self.kid_opts, "kernel": "poly degree 3, gamma 1/d, coef0 1", "rng_seed": 2020} if self.kid else None,
            "precision_recall": {"neighborhood": self.prc_neighborhood} if self.prc else None,
            "feature_subset": {"size": self.subset_size, "kept": len(subset.idx),
                               "selection": "bottom-k of splitmix64(sample index)"} if subset else None,
            "feature_extraction_s": self.seconds,
        }
